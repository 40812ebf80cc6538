import Foundation
import Hummingbird
import Logging
import TorusModel
import TorusServe

/// The OpenAI-compatible HTTP API over one served model (vLLM's endpoints, fields, errors and
/// metric names), on Hummingbird.
public final class HTTPServer: Sendable {
    public let model: ServedModel
    public let options: HTTPOptions
    public let metrics: ServeMetrics
    private let unknownFields = UnknownFieldLog()

    public init(model: ServedModel, options: HTTPOptions) {
        self.model = model
        self.options = options
        self.metrics = ServeMetrics(modelName: model.name)
        model.engine.observer = metrics
    }

    /// Serves until SIGTERM or SIGINT; then open streams get `shutdownGraceSeconds` to finish
    /// before the engine aborts them. `onReady` runs once the socket listens.
    public func run(onReady: @escaping @Sendable (Int) -> Void = { _ in }) async throws {
        var logger = Logger(label: "torus.http")
        logger.logLevel = .warning
        let app = Application(router: makeRouter(),
                              configuration: .init(address: .hostname(options.host, port: options.port), serverName: "torus"),
                              services: [EngineShutdown(engine: model.engine, grace: options.shutdownGraceSeconds)],
                              onServerRunning: { channel in onReady(channel.localAddress?.port ?? 0) },
                              logger: logger)
        try await app.runService()
    }

    func makeRouter() -> Router<BasicRequestContext> {
        let router = Router()
        router.add(middleware: ErrorMiddleware())
        if let key = options.apiKey { router.add(middleware: APIKeyMiddleware(key: key)) }
        router.get("health") { _, _ -> Response in
            if let failure = self.model.engine.failure {
                return HTTPServer.json(APIError(.serviceUnavailable, failure).json, status: .serviceUnavailable)
            }
            return Response(status: .ok)
        }
        router.get("version") { _, _ in HTTPServer.json(.object([("version", .string(TorusVersion.string))])) }
        router.get("metrics") { _, _ -> Response in
            var headers = HTTPFields()
            headers[.contentType] = "text/plain; version=0.0.4; charset=utf-8"
            return Response(status: .ok, headers: headers, body: .init(byteBuffer: ByteBuffer(string: self.metrics.render())))
        }
        router.get("v1/models") { _, _ in HTTPServer.json(self.modelList) }
        router.post("v1/completions") { request, _ in try await self.complete(request, kind: .completion) }
        router.post("v1/chat/completions") { request, _ in try await self.complete(request, kind: .chat) }
        router.post("tokenize") { request, _ in try await self.tokenize(request) }
        router.post("detokenize") { request, _ in try await self.detokenize(request) }
        return router
    }

    var modelList: JSONValue {
        .object([("object", "list"), ("data", .array([.object([
            ("id", .string(model.name)), ("object", "model"), ("created", .int(model.created)), ("owned_by", "torus"),
            ("root", .string(model.root)), ("parent", .null), ("max_model_len", .int(model.maxModelLength)),
        ])]))])
    }

    func body(_ request: Request) async throws -> JSONValue {
        let buffer: ByteBuffer
        do { buffer = try await request.body.collect(upTo: options.maxBodyBytes) } catch {
            throw APIError(.contentTooLarge, "the request body is larger than \(options.maxBodyBytes) bytes")
        }
        do { return try JSONValue.parse(Data(buffer: buffer)) } catch {
            throw APIError.badRequest("the request body is not valid JSON: \(error)")
        }
    }

    func complete(_ request: Request, kind: CompletionRequest.Kind) async throws -> Response {
        let json = try await body(request)
        let parsed = try CompletionRequest.parse(json, kind: kind, model: model)
        if case let .object(pairs) = json { unknownFields.note(pairs.map(\.0).filter { !CompletionRequest.known.contains($0) }) }
        let responder = CompletionResponder(model: model, request: parsed)
        return parsed.stream ? try responder.stream() : try await responder.respond()
    }

    func tokenize(_ request: Request) async throws -> Response {
        let f = try RequestFields(try await body(request))
        if let name = try f.string("model"), name != model.name {
            throw APIError(.notFound, "The model `\(name)` does not exist.", param: "model")
        }
        let tokens: [Int32]
        if let prompt = try f.string("prompt") {
            tokens = model.tokenizer.encode(prompt)
        } else if f.value("messages") != nil {
            guard let template = model.chatTemplate else { throw APIError.badRequest("this model has no chat template") }
            tokens = model.tokenizer.encode(template.render(try CompletionRequest.parseMessages(f.value("messages"))))
        } else {
            throw APIError.badRequest("'prompt' (a string) or 'messages' is required", param: "prompt")
        }
        return HTTPServer.json(.object([("count", .int(tokens.count)), ("max_model_len", .int(model.maxModelLength)),
                                        ("tokens", .array(tokens.map { .int(Int($0)) }))]))
    }

    func detokenize(_ request: Request) async throws -> Response {
        let f = try RequestFields(try await body(request))
        guard let ids = try f.ints("tokens") else { throw APIError.badRequest("'tokens' (a list of token ids) is required", param: "tokens") }
        let vocab = model.vocabularySize
        if let bad = ids.first(where: { $0 < 0 || $0 >= vocab }) {
            throw APIError.badRequest("token id \(bad) is outside the vocabulary [0, \(vocab))", param: "tokens")
        }
        return HTTPServer.json(.object([("prompt", .string(model.tokenizer.decode(ids.map(Int32.init))))]))
    }

    static func json(_ value: JSONValue, status: HTTPResponse.Status = .ok) -> Response {
        var headers = HTTPFields()
        headers[.contentType] = "application/json"
        return Response(status: status, headers: headers, body: .init(byteBuffer: ByteBuffer(string: value.serialized)))
    }

    static func error(_ e: APIError) -> Response {
        var response = json(e.json, status: e.status)
        if let after = e.retryAfter { response.headers[.retryAfter] = String(after) }
        return response
    }
}

/// The version `/version` reports.
public enum TorusVersion {
    public static let string = "0.3.0"
}

/// Turns every error into OpenAI's error body with the right status.
struct ErrorMiddleware<Context: RequestContext>: RouterMiddleware {
    func handle(_ request: Request, context: Context, next: (Request, Context) async throws -> Response) async throws -> Response {
        do {
            return try await next(request, context)
        } catch let e as APIError {
            return HTTPServer.error(e)
        } catch let e as HTTPResponseError {
            let message = e.status == .notFound ? "no route for \(request.method) \(request.uri.path)" : "\(e)"
            return HTTPServer.error(APIError(e.status, message))
        } catch {
            return HTTPServer.error(APIError(.internalServerError, "\(error)"))
        }
    }
}

/// `Authorization: Bearer <key>` on `/v1/*`.
struct APIKeyMiddleware<Context: RequestContext>: RouterMiddleware {
    let key: String
    func handle(_ request: Request, context: Context, next: (Request, Context) async throws -> Response) async throws -> Response {
        if request.uri.path.hasPrefix("/v1"), request.headers[.authorization] != "Bearer \(key)" {
            return HTTPServer.error(APIError(.unauthorized, "invalid or missing API key (send Authorization: Bearer <key>)"))
        }
        return try await next(request, context)
    }
}

/// Logs each unknown request field once (they are accepted, as vLLM does).
final class UnknownFieldLog: @unchecked Sendable {
    private let lock = NSLock()
    private var seen: Set<String> = []
    func note(_ fields: [String]) {
        lock.lock()
        let fresh = fields.filter { seen.insert($0).inserted }
        lock.unlock()
        for f in fresh { FileHandle.standardError.write(Data("serve: ignoring unknown request field '\(f)'\n".utf8)) }
    }
}
