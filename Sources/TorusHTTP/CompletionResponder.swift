import Foundation
import Hummingbird
import TorusModel
import TorusServe

/// Runs a parsed completion or chat request on the engine and writes the answer: one JSON
/// body, or server-sent events as the tokens come.
struct CompletionResponder: Sendable {
    let model: ServedModel
    let request: CompletionRequest
    let id: String
    let created: Int

    init(model: ServedModel, request: CompletionRequest) {
        self.model = model
        self.request = request
        self.id = (request.kind == .chat ? "chatcmpl-" : "cmpl-") + UUID().uuidString.replacingOccurrences(of: "-", with: "").lowercased()
        self.created = Int(Date().timeIntervalSince1970)
    }

    /// Submits every choice; on a refusal, cancels those already submitted.
    func start() throws -> [TextGeneration] {
        var started: [TextGeneration] = []
        do {
            for p in request.prompts.indices {
                for c in 0..<request.n {
                    started.append(try TextGeneration.start(engine: model.engine, request: request.generationRequest(prompt: p, choice: c),
                                                            tokenizer: model.tokenizer, stop: request.stop))
                }
            }
        } catch {
            for g in started { g.cancel() }
            throw Self.apiError(error)
        }
        return started
    }

    static func apiError(_ error: Error) -> APIError {
        switch error {
        case let e as APIError: return e
        case let e as EngineError:
            switch e {
            case .queueFull: return APIError(.tooManyRequests, e.description, retryAfter: 1)
            case .dead: return APIError(.serviceUnavailable, e.description, retryAfter: 5)
            case .tooLong, .emptyPrompt, .tooLongForOneRank: return APIError.badRequest(e.description, param: "prompt")
            case .tokenOutOfRange: return APIError.badRequest(e.description, param: "prompt")
            }
        default: return APIError(.internalServerError, "\(error)")
        }
    }

    var objectName: String { request.kind == .chat ? "chat.completion" : "text_completion" }

    // MARK: - One JSON body

    func respond() async throws -> Response {
        let generations = try start()
        var texts = Array(repeating: "", count: generations.count)
        var reasons = Array(repeating: FinishReason.abort, count: generations.count)
        var logprobs = Array(repeating: LogprobsBuilder(tokenizer: model.tokenizer, tokensAsIDs: request.tokensAsIDs), count: generations.count)
        var outputTokens = 0
        var timings = [GenerationTimings?](repeating: nil, count: generations.count)
        for (i, g) in generations.enumerated() {
            for await event in g.events {
                switch event {
                case let .delta(text, tokens, lps, _):
                    texts[i] += text
                    logprobs[i].add(tokens: tokens, logprobs: lps, textOffset: texts[i].utf8.count - text.utf8.count)
                case let .finished(reason, t):
                    reasons[i] = reason
                    outputTokens += t.outputTokens
                    timings[i] = t
                case let .failed(message):
                    for g in generations { g.cancel() }
                    throw APIError(.internalServerError, message)
                }
            }
        }
        let choices: [JSONValue] = generations.indices.map { i in
            let promptIndex = i / request.n
            var pairs: [(String, JSONValue)] = [("index", .int(i))]
            if request.kind == .chat {
                pairs.append(("message", .object([("role", "assistant"), ("content", .string(texts[i]))])))
                pairs.append(("logprobs", request.logprobs == nil ? .null : logprobs[i].chat))
            } else {
                let echoed = request.echo ? (request.promptTexts[promptIndex] ?? model.tokenizer.decode(request.prompts[promptIndex])) : ""
                pairs.append(("text", .string(echoed + texts[i])))
                pairs.append(("logprobs", request.logprobs == nil ? .null : logprobs[i].completion))
            }
            pairs.append(("finish_reason", .string(reasons[i].rawValue)))
            pairs.append(("stop_reason", .null))
            return .object(pairs)
        }
        let body: JSONValue = .object([("id", .string(id)), ("object", .string(objectName)), ("created", .int(created)),
                                       ("model", .string(model.name)), ("choices", .array(choices)), ("usage", usage(outputTokens, timings))])
        return HTTPServer.json(body)
    }

    /// OpenAI's usage, with `prompt_tokens_details.cached_tokens` (prompt tokens whose KV
    /// came from a cache and was not recomputed) and, for chunk reuse, Torus's `reuse` object.
    func usage(_ completionTokens: Int, _ timings: [GenerationTimings?]) -> JSONValue {
        let prompt = request.prompts.map(\.count).reduce(0, +)
        // Every choice of one prompt shares its prefill: count the first choice of each.
        let firsts = stride(from: 0, to: timings.count, by: max(request.n, 1)).compactMap { timings[$0] }
        var pairs: [(String, JSONValue)] = [("prompt_tokens", .int(prompt)), ("completion_tokens", .int(completionTokens)),
                                            ("total_tokens", .int(prompt + completionTokens)),
                                            ("prompt_tokens_details", .object([("cached_tokens", .int(firsts.map(\.cachedTokens).reduce(0, +)))]))]
        let reports = firsts.compactMap(\.reuse)
        if !reports.isEmpty {
            pairs.append(("reuse", .object([("chunks", .int(reports.map(\.chunks).reduce(0, +))),
                                            ("chunk_hits", .int(reports.map(\.hits).reduce(0, +))),
                                            ("reused_tokens", .int(reports.map(\.reusedTokens).reduce(0, +))),
                                            ("recomputed_tokens", .int(reports.map(\.recomputedTokens).reduce(0, +)))])))
        }
        return .object(pairs)
    }

    // MARK: - Server-sent events

    func stream() throws -> Response {
        let generations = try start()
        let responder = self
        let body: ResponseBody
        if generations.count == 1, let only = generations.first {
            // One choice: its events are written as they come (no task merging streams, one
            // task switch a token fewer).
            body = ResponseBody { writer in
                do {
                    try await responder.writeEvents(only.events.map { (0, $0) }, choices: 1, to: &writer)
                } catch {
                    // The client went away (a write failed): stop generating for it.
                    only.cancel()
                }
            }
        } else {
            let (merged, sink) = AsyncStream<(Int, TextEvent)>.makeStream()
            let forwarders = Task {
                await withTaskGroup(of: Void.self) { group in
                    for (i, g) in generations.enumerated() {
                        group.addTask { for await e in g.events { sink.yield((i, e)) } }
                    }
                }
                sink.finish()
            }
            body = ResponseBody { writer in
                do {
                    try await responder.writeEvents(merged, choices: generations.count, to: &writer)
                } catch {
                    // The client went away (a write failed): stop generating for it.
                    for g in generations { g.cancel() }
                    forwarders.cancel()
                }
            }
        }
        var headers = HTTPFields()
        headers[.contentType] = "text/event-stream"
        headers[.cacheControl] = "no-cache"
        return Response(status: .ok, headers: headers, body: body)
    }

    private func writeEvents<Events: AsyncSequence>(_ events: Events, choices: Int, to writer: inout any ResponseBodyWriter) async throws
        where Events.Element == (Int, TextEvent) {
        var outputTokens = 0
        var timings = [GenerationTimings?](repeating: nil, count: choices)
        var roleSent = Array(repeating: false, count: choices)
        var finishSent = Array(repeating: false, count: choices)
        var textLength = Array(repeating: 0, count: choices)
        if request.echo {
            for i in 0..<choices {
                let p = i / request.n
                let text = request.promptTexts[p] ?? model.tokenizer.decode(request.prompts[p])
                try await writer.write(Self.event(chunk(i, text: text, logprobs: nil, finish: nil)))
                textLength[i] = text.utf8.count
            }
        }
        for try await (i, event) in events {
            switch event {
            case let .delta(text, tokens, lps, finish):
                // One chunk per token, as vLLM sends them: a token that completes no character yet
                // (or may start a stop string) goes out with empty text, so time to first token is
                // the first token's time.
                guard !text.isEmpty || finish != nil || !tokens.isEmpty else { continue }
                var lp: JSONValue?
                if request.logprobs != nil {
                    // A chunk carries the log-probabilities of its own tokens.
                    var builder = LogprobsBuilder(tokenizer: model.tokenizer, tokensAsIDs: request.tokensAsIDs)
                    builder.add(tokens: tokens, logprobs: lps, textOffset: textLength[i])
                    lp = request.kind == .chat ? builder.chat : builder.completion
                }
                textLength[i] += text.utf8.count
                let first = !roleSent[i]
                roleSent[i] = true
                if finish != nil { finishSent[i] = true }
                try await writer.write(Self.event(chunk(i, text: text, logprobs: lp, finish: finish, role: first)))
            case let .finished(reason, t):
                outputTokens += t.outputTokens
                timings[i] = t
                if !finishSent[i] {
                    finishSent[i] = true
                    try await writer.write(Self.event(chunk(i, text: "", logprobs: nil, finish: reason, role: !roleSent[i])))
                }
            case let .failed(message):
                let error = APIError(.internalServerError, message)
                try await writer.write(Self.event(error.json))
            }
        }
        if request.includeUsage {
            try await writer.write(Self.event(.object([("id", .string(id)), ("object", .string(objectName + (request.kind == .chat ? ".chunk" : ""))),
                                                       ("created", .int(created)), ("model", .string(model.name)),
                                                       ("choices", .array([])), ("usage", usage(outputTokens, timings))])))
        }
        try await writer.write(ByteBuffer(string: "data: [DONE]\n\n"))
        try await writer.finish(nil)
    }

    func chunk(_ index: Int, text: String, logprobs: JSONValue?, finish: FinishReason?, role: Bool = false) -> JSONValue {
        var choice: [(String, JSONValue)] = [("index", .int(index))]
        if request.kind == .chat {
            var delta: [(String, JSONValue)] = []
            if role { delta.append(("role", "assistant")) }
            delta.append(("content", .string(text)))
            choice.append(("delta", .object(delta)))
        } else {
            choice.append(("text", .string(text)))
        }
        choice.append(("logprobs", logprobs ?? .null))
        choice.append(("finish_reason", finish.map { .string($0.rawValue) } ?? .null))
        if finish != nil { choice.append(("stop_reason", .null)) }
        return .object([("id", .string(id)), ("object", .string(request.kind == .chat ? "chat.completion.chunk" : "text_completion")),
                        ("created", .int(created)), ("model", .string(model.name)), ("choices", .array([.object(choice)]))])
    }

    static func event(_ value: JSONValue) -> ByteBuffer { ByteBuffer(string: "data: " + value.serialized + "\n\n") }
}

/// Log-probabilities in the two OpenAI shapes (completions and chat).
struct LogprobsBuilder {
    let tokenizer: any TextTokenizer
    var tokens: [Int32] = []
    var values: [TokenLogprobs] = []
    var offsets: [Int] = []
    let tokensAsIDs: Bool

    init(tokenizer: any TextTokenizer, tokensAsIDs: Bool) {
        self.tokenizer = tokenizer
        self.tokensAsIDs = tokensAsIDs
    }

    mutating func add(tokens: [Int32], logprobs: [TokenLogprobs], textOffset: Int) {
        guard logprobs.count == tokens.count else { return }
        self.tokens += tokens
        values += logprobs
        offsets += Array(repeating: textOffset, count: tokens.count)
    }

    func text(_ t: Int32) -> String { tokensAsIDs ? "token_id:\(t)" : tokenizer.decode([t]) }

    var completion: JSONValue {
        .object([
            ("text_offset", .array(offsets.map { .int($0) })),
            ("token_logprobs", .array(values.map { .float($0.logprob) })),
            ("tokens", .array(tokens.map { .string(text($0)) })),
            ("top_logprobs", .array(values.map { v in .object(v.top.map { (text($0.token), .float($0.logprob)) }) })),
        ])
    }

    var chat: JSONValue {
        func entry(_ t: Int32, _ lp: Float) -> [(String, JSONValue)] {
            let s = text(t)
            return [("token", .string(s)), ("logprob", .float(lp)), ("bytes", .array(Array(s.utf8).map { .int(Int($0)) }))]
        }
        return .object([("content", .array(zip(tokens, values).map { t, v in
            .object(entry(t, v.logprob) + [("top_logprobs", .array(v.top.map { .object(entry($0.token, $0.logprob)) }))])
        }))])
    }
}
