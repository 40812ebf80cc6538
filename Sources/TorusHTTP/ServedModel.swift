import Foundation
import TorusModel
import TorusServe

/// What the HTTP layer serves: one engine with its tokenizer, names and chat template.
public struct ServedModel: Sendable {
    public let engine: Engine
    public let tokenizer: any TextTokenizer
    /// The name clients pass as `model`.
    public let name: String
    /// The model directory (`root` in `/v1/models`).
    public let root: String
    /// The chat template; nil refuses `/v1/chat/completions` with a 400.
    public let chatTemplate: ChatTemplate?
    public let created: Int
    /// Completion prompts containing this string are split there into chunks (all parts but
    /// the last) and the question (LMCache's convention); nil: no splitting.
    public let chunkSeparator: String?
    /// Token ids of documents seen recently (documents recur under chunk reuse).
    public let documentTokens = DocumentTokenCache()

    public init(engine: Engine, tokenizer: any TextTokenizer, name: String, root: String, chatTemplate: ChatTemplate?,
                chunkSeparator: String? = nil) {
        self.chunkSeparator = chunkSeparator
        self.engine = engine
        self.tokenizer = tokenizer
        self.name = name
        self.root = root
        self.chatTemplate = chatTemplate
        self.created = Int(Date().timeIntervalSince1970)
    }

    var maxModelLength: Int { engine.maxModelLength }
    var vocabularySize: Int { engine.model.config.vocabSize }
}

/// Limits and security settings of the HTTP server.
public struct HTTPOptions: Sendable {
    public var host: String
    public var port: Int
    /// Required as `Authorization: Bearer <key>` on `/v1/*` when set.
    public var apiKey: String?
    /// Largest request body accepted (413 past it).
    public var maxBodyBytes: Int
    /// Choices per request at most (`n`).
    public var maxChoices: Int
    /// On SIGTERM/SIGINT, open streams may finish for this long before they are aborted.
    public var shutdownGraceSeconds: Double

    public init(host: String = "127.0.0.1", port: Int = 8000, apiKey: String? = nil, maxBodyBytes: Int = 64 << 20,
                maxChoices: Int = 16, shutdownGraceSeconds: Double = 10) {
        self.host = host
        self.port = port
        self.apiKey = apiKey
        self.maxBodyBytes = maxBodyBytes
        self.maxChoices = maxChoices
        self.shutdownGraceSeconds = shutdownGraceSeconds
    }
}
