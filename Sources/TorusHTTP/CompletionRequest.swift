import Foundation
import TorusModel
import TorusServe

/// A parsed `/v1/completions` or `/v1/chat/completions` request: the prompts as token ids and
/// everything else the engine and the response need.
struct CompletionRequest {
    enum Kind { case completion, chat }
    let kind: Kind
    var prompts: [[Int32]]
    var promptTexts: [String?]
    var maxTokens: Int?
    var sampling: SamplingOptions
    var seeded: Bool
    var stop: [String]
    var stopTokenIDs: Set<Int32>
    var ignoreEOS: Bool
    var n: Int
    /// Completions: top-k count; chat: `top_logprobs` when `logprobs` is true.
    var logprobs: Int?
    var echo: Bool
    var stream: Bool
    var includeUsage: Bool
    var cacheSalt: String?
    /// vLLM's extension: log-probability entries name tokens as "token_id:N".
    var tokensAsIDs: Bool
    /// Torus's extension: per prompt, the token spans of its retrieved documents (the
    /// `documents` field, or the parts before the last chunk separator), each a chunk whose KV
    /// may be reused at any position.
    var chunkSpans: [[Range<Int>]] = []
    /// Torus's extension: the recompute policy of this request's chunk reuse.
    var reusePolicy: ReusePolicy?

    static let known: Set<String> = ["model", "prompt", "messages", "max_tokens", "max_completion_tokens", "temperature", "top_p",
                                     "top_k", "seed", "stop", "stop_token_ids", "ignore_eos", "n", "logprobs", "top_logprobs",
                                     "echo", "stream", "stream_options", "cache_salt", "user", "return_tokens_as_token_ids",
                                     "documents", "reuse_policy", "reuse_ratio", "reuse_alpha"]

    /// Parses and checks a request body against the served model.
    static func parse(_ body: JSONValue, kind: Kind, model: ServedModel) throws -> CompletionRequest {
        let f = try RequestFields(body)
        if let name = try f.string("model"), name != model.name {
            throw APIError(.notFound, "The model `\(name)` does not exist.", param: "model")
        }
        var prompts: [[Int32]] = [], texts: [String?] = []
        var stop = try f.strings("stop") ?? []
        switch kind {
        case .completion:
            guard let p = f.value("prompt") else { throw APIError.badRequest("'prompt' is required", param: "prompt") }
            (prompts, texts) = try parsePrompt(p, model: model)
        case .chat:
            guard let template = model.chatTemplate else {
                throw APIError.badRequest("As of transformers v4.44, default chat template is no longer allowed, so you must provide "
                    + "a chat template if the tokenizer does not define one. Torus serves chat with a built-in template named in the "
                    + "serving config (serve.chat_template: \(ChatTemplate.allCases.map(\.rawValue).joined(separator: " | "))).")
            }
            let messages = try parseMessages(f.value("messages"))
            let text = template.render(messages)
            prompts = [model.tokenizer.encode(text)]
            texts = [text]
            stop.append(template.endOfTurn)
        }
        for (i, p) in prompts.enumerated() where p.isEmpty {
            throw APIError.badRequest("prompt \(i) is empty", param: kind == .chat ? "messages" : "prompt")
        }
        let (documents, spans, documentText) = try parseDocuments(f, model: model)
        var chunkSpans = [[Range<Int>]](repeating: [], count: prompts.count)
        if !documents.isEmpty {
            prompts = prompts.map { documents + $0 }
            texts = texts.map { t in t.map { documentText + $0 } }
            chunkSpans = chunkSpans.map { _ in spans }
        } else if let separator = model.chunkSeparator, kind == .completion {
            // LMCache's convention: "doc1 SEP doc2 SEP question"; the separators are removed.
            for (i, text) in texts.enumerated() {
                guard let text, text.contains(separator) else { continue }
                let parts = text.components(separatedBy: separator)
                var tokens: [Int32] = [], spans: [Range<Int>] = []
                for (j, part) in parts.dropLast().enumerated() {
                    let ids = model.documentTokens.tokens(of: part) { model.tokenizer.encode($0) }
                    guard !ids.isEmpty else {
                        throw APIError.badRequest("prompt\(texts.count > 1 ? "[\(i)]" : ""): chunk \(j) before separator \(j + 1) "
                            + "('\(separator)') is empty", param: "prompt")
                    }
                    spans.append(tokens.count..<(tokens.count + ids.count))
                    tokens += ids
                }
                let question = model.tokenizer.encode(parts[parts.count - 1])
                guard !question.isEmpty else {
                    throw APIError.badRequest("prompt\(texts.count > 1 ? "[\(i)]" : ""): nothing follows the last separator "
                        + "('\(separator)'); the text after it is the question", param: "prompt")
                }
                prompts[i] = tokens + question
                texts[i] = parts.joined()
                chunkSpans[i] = spans
            }
        }
        let reusePolicy = try parseReusePolicy(f, default: model.engine.reuse?.policy ?? ReusePolicy())
        var maxTokens = try f.int("max_tokens")
        if kind == .chat, let m = try f.int("max_completion_tokens") { maxTokens = m }
        if kind == .completion && maxTokens == nil { maxTokens = 16 }
        if let m = maxTokens, m < 1 {
            throw APIError.badRequest("max_tokens must be at least 1, got \(m).", param: kind == .chat ? "max_completion_tokens" : "max_tokens")
        }
        let temperature = try f.number("temperature", in: 0...100) ?? 1
        let topP = try f.number("top_p") ?? 1
        guard topP > 0 && topP <= 1 else { throw APIError.badRequest("top_p must be in (0, 1], got \(topP).", param: "top_p") }
        let topK = try f.int("top_k") ?? 0
        guard topK >= -1 else { throw APIError.badRequest("top_k must be -1 (disable), 0 (disable) or at least 1, got \(topK).", param: "top_k") }
        let seed = try f.int("seed")
        let n = try f.int("n") ?? 1
        guard n >= 1 && n <= 128 else { throw APIError.badRequest("n must be between 1 and 128, got \(n).", param: "n") }
        let vocab = model.vocabularySize
        let stopIDs = try (f.ints("stop_token_ids") ?? []).map { id -> Int32 in
            guard id >= 0 && id < vocab else {
                throw APIError.badRequest("stop_token_ids: token id \(id) is outside the vocabulary [0, \(vocab))", param: "stop_token_ids")
            }
            return Int32(id)
        }
        var logprobs: Int?
        switch kind {
        case .completion:
            logprobs = try f.int("logprobs", in: 0...20)
        case .chat:
            if try f.bool("logprobs") == true { logprobs = try f.int("top_logprobs", in: 0...20) ?? 0 }
            else if try f.int("top_logprobs") != nil {
                throw APIError.badRequest("when using `top_logprobs`, `logprobs` must be set to true.", param: "top_logprobs")
            }
        }
        let stream = try f.bool("stream") ?? false
        let options = try f.object("stream_options")
        let includeUsage = try options?.bool("include_usage") ?? false
        if options != nil && !stream {
            throw APIError.badRequest("Stream options can only be defined when `stream=True`.", param: "stream_options")
        }
        return CompletionRequest(
            kind: kind, prompts: prompts, promptTexts: texts, maxTokens: maxTokens,
            sampling: SamplingOptions(temperature: Float(temperature), topP: Float(topP), topK: max(0, topK),
                                      seed: seed.map { UInt64(bitPattern: Int64($0)) } ?? UInt64.random(in: 0...UInt64.max)),
            seeded: seed != nil, stop: stop, stopTokenIDs: Set(stopIDs), ignoreEOS: try f.bool("ignore_eos") ?? false,
            n: n, logprobs: logprobs, echo: kind == .completion ? (try f.bool("echo") ?? false) : false,
            stream: stream, includeUsage: includeUsage, cacheSalt: try f.string("cache_salt"),
            tokensAsIDs: try f.bool("return_tokens_as_token_ids") ?? false, chunkSpans: chunkSpans, reusePolicy: reusePolicy)
    }

    /// `documents`: a list of non-empty strings, tokenized one by one (so a document has the
    /// same tokens in every request) and concatenated.
    static func parseDocuments(_ f: RequestFields, model: ServedModel) throws -> (tokens: [Int32], spans: [Range<Int>], text: String) {
        guard let value = f.value("documents") else { return ([], [], "") }
        guard case let .array(items) = value else {
            throw APIError.badRequest("'documents' must be a list of strings, got \(RequestFields.kind(value))", param: "documents")
        }
        var tokens: [Int32] = [], spans: [Range<Int>] = [], joined = ""
        for (i, item) in items.enumerated() {
            guard case let .string(text) = item else {
                throw APIError.badRequest("'documents[\(i)]' must be a string, got \(RequestFields.kind(item))", param: "documents")
            }
            let ids = model.documentTokens.tokens(of: text) { model.tokenizer.encode($0) }
            guard !ids.isEmpty else { throw APIError.badRequest("'documents[\(i)]' is empty", param: "documents") }
            spans.append(tokens.count..<(tokens.count + ids.count))
            tokens += ids
            joined += text
        }
        return (tokens, spans, joined)
    }

    /// `reuse_policy` (full | unchanged | cacheblend | gradual | faithful | epic | cachecraft, or
    /// epic+ one of cacheblend, faithful, gradual, cachecraft),
    /// `reuse_ratio` (the share recomputed by the check-layer selectors) and `reuse_alpha`
    /// (Cache-Craft's scale), each over the server's policy `base`.
    static func parseReusePolicy(_ f: RequestFields, default base: ReusePolicy) throws -> ReusePolicy? {
        let name = try f.string("reuse_policy"), ratio = try f.number("reuse_ratio"), alpha = try f.number("reuse_alpha")
        guard name != nil || ratio != nil || alpha != nil else { return nil }
        var policy = base
        if let name {
            guard policy.select(name) else {
                throw APIError.badRequest("reuse_policy must be one of \(ReusePolicy.names.joined(separator: ", ")), got '\(name)'",
                                          param: "reuse_policy")
            }
        }
        if let ratio {
            guard (0...1).contains(ratio) else { throw APIError.badRequest("reuse_ratio must be in [0, 1], got \(ratio)", param: "reuse_ratio") }
            policy.ratio = ratio
        }
        if let alpha {
            guard alpha >= 0, alpha.isFinite else { throw APIError.badRequest("reuse_alpha must be 0 or more, got \(alpha)", param: "reuse_alpha") }
            policy.alpha = alpha
        }
        if let problem = policy.misplacedKnob(ratio: ratio.map { _ in "reuse_ratio" }, alpha: alpha.map { _ in "reuse_alpha" }, alphaName: "reuse_alpha") {
            throw APIError.badRequest(problem, param: ratio != nil && policy.method == .cachecraft ? "reuse_ratio" : "reuse_alpha")
        }
        return policy
    }

    /// The engine request of choice `choice` of prompt `index` (each choice its own seed).
    func generationRequest(prompt index: Int, choice: Int) -> GenerationRequest {
        var sampling = self.sampling
        sampling.seed = sampling.seed &+ UInt64(choice)
        var r = GenerationRequest(prompt: prompts[index], maxTokens: maxTokens, sampling: sampling, stopTokenIDs: stopTokenIDs,
                                  ignoreEOS: ignoreEOS, logprobs: logprobs, cacheSalt: cacheSalt)
        r.chunks = chunkSpans[index]
        r.reusePolicy = reusePolicy
        return r
    }

    /// `prompt`: a string, a list of strings, a list of token ids, or a list of such lists.
    static func parsePrompt(_ p: JSONValue, model: ServedModel) throws -> ([[Int32]], [String?]) {
        let vocab = model.vocabularySize
        func ids(_ items: [JSONValue], at path: String) throws -> [Int32] {
            try items.enumerated().map { i, item in
                guard case let .int(t) = item else {
                    throw APIError.badRequest("'\(path)[\(i)]' must be a token id (integer), got \(RequestFields.kind(item))", param: "prompt")
                }
                guard t >= 0 && t < vocab else {
                    throw APIError.badRequest("Token id \(t) is out of vocabulary (the model's vocabulary has \(vocab) tokens).", param: "prompt")
                }
                return Int32(t)
            }
        }
        switch p {
        case let .string(s): return ([model.tokenizer.encode(s)], [s])
        case let .array(items):
            guard let first = items.first else { throw APIError.badRequest("'prompt' is an empty list", param: "prompt") }
            switch first {
            case .int: return ([try ids(items, at: "prompt")], [nil])
            case .string:
                let strings = try items.enumerated().map { i, item -> String in
                    guard case let .string(s) = item else { throw APIError.badRequest("'prompt[\(i)]' must be a string", param: "prompt") }
                    return s
                }
                return (strings.map(model.tokenizer.encode), strings)
            case .array:
                let lists = try items.enumerated().map { i, item -> [Int32] in
                    guard case let .array(inner) = item else { throw APIError.badRequest("'prompt[\(i)]' must be a list of token ids", param: "prompt") }
                    return try ids(inner, at: "prompt[\(i)]")
                }
                return (lists, lists.map { _ in nil })
            default:
                throw APIError.badRequest("'prompt' must be a string, a list of strings, a list of token ids or a list of such lists",
                                          param: "prompt")
            }
        default:
            throw APIError.badRequest("'prompt' must be a string, a list of strings, a list of token ids or a list of such lists, got "
                + RequestFields.kind(p), param: "prompt")
        }
    }

    static func parseMessages(_ value: JSONValue?) throws -> [ChatTemplate.Message] {
        guard let value else { throw APIError.badRequest("'messages' is required", param: "messages") }
        guard case let .array(items) = value, !items.isEmpty else {
            throw APIError.badRequest("'messages' must be a non-empty list of messages", param: "messages")
        }
        return try items.enumerated().map { i, item in
            let m = try RequestFields(item)
            guard let role = try m.string("role") else { throw APIError.badRequest("'messages[\(i)].role' is required", param: "messages") }
            switch m.value("content") {
            case nil: return .init(role: role, content: "")
            case let .string(s)?: return .init(role: role, content: s)
            case let .array(parts)?:
                let text = try parts.enumerated().map { j, part -> String in
                    let pf = try RequestFields(part)
                    guard try pf.string("type") == "text", let t = try pf.string("text") else {
                        throw APIError.badRequest("'messages[\(i)].content[\(j)]' must be {\"type\": \"text\", \"text\": ...}; "
                            + "only text content is supported", param: "messages")
                    }
                    return t
                }.joined(separator: "\n")
                return .init(role: role, content: text)
            case let other?:
                throw APIError.badRequest("'messages[\(i)].content' must be a string or a list of text parts, got \(RequestFields.kind(other))",
                                          param: "messages")
            }
        }
    }
}
