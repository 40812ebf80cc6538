import Foundation
import TorusModel

/// What one generation asks of the engine: token ids in, how to choose and when to stop.
public struct GenerationRequest: Sendable {
    public var prompt: [Int32]
    /// New tokens at most; nil means up to the context limit.
    public var maxTokens: Int?
    public var sampling: SamplingOptions
    public var stopTokenIDs: Set<Int32>
    /// Keep going past the tokenizer's end-of-sequence token.
    public var ignoreEOS: Bool
    /// Top-k log-probabilities to return with every token (nil: none; 0: the chosen token's only).
    public var logprobs: Int?
    /// Only requests with the same salt share cached KV blocks.
    public var cacheSalt: String?
    /// Spans of `prompt` holding retrieved chunks whose KV may be reused at any position
    /// (ascending, disjoint); empty: none.
    public var chunks: [Range<Int>] = []
    /// The recompute policy of this request's chunk reuse (nil: the server's).
    public var reusePolicy: ReusePolicy?

    public init(prompt: [Int32], maxTokens: Int? = nil, sampling: SamplingOptions = .init(), stopTokenIDs: Set<Int32> = [],
                ignoreEOS: Bool = false, logprobs: Int? = nil, cacheSalt: String? = nil) {
        self.prompt = prompt
        self.maxTokens = maxTokens
        self.sampling = sampling
        self.stopTokenIDs = stopTokenIDs
        self.ignoreEOS = ignoreEOS
        self.logprobs = logprobs
        self.cacheSalt = cacheSalt
    }
}

/// Why a generation ended (OpenAI's `finish_reason`, plus aborts).
public enum FinishReason: String, Sendable {
    case stop, length, abort
}

/// The log-probability of a chosen token and of the most likely alternatives.
public struct TokenLogprobs: Sendable, Equatable {
    public var logprob: Float
    /// Most likely first.
    public var top: [(token: Int32, logprob: Float)]

    public static func == (a: TokenLogprobs, b: TokenLogprobs) -> Bool {
        a.logprob == b.logprob && a.top.map(\.token) == b.top.map(\.token) && a.top.map(\.logprob) == b.top.map(\.logprob)
    }
}

/// What the engine reports for one request, in order.
public enum GenerationEvent: Sendable {
    /// A chosen token; `finishing` is set when it is the request's last (a `.finished` follows).
    case token(Int32, TokenLogprobs?, finishing: FinishReason?)
    /// The last event of a request that ran.
    case finished(FinishReason, GenerationTimings)
    /// The engine failed; the last event.
    case failed(String)
}

/// When things happened to one request (seconds since its arrival), for the latency metrics.
public struct GenerationTimings: Sendable {
    public var queued: Double = 0
    public var firstToken: Double?
    public var finished: Double = 0
    public var promptTokens = 0
    public var outputTokens = 0
    public var cachedTokens = 0
    public var preemptions = 0
    /// Chunk reuse: the last prefill's report (nil when the prompt had no reusable chunks).
    public var reuse: ReuseReport?
}

/// Refusals at submission.
public enum EngineError: Error, CustomStringConvertible, Equatable {
    /// The waiting queue is full; try again later.
    case queueFull(limit: Int)
    /// The prompt (plus the requested output) does not fit the context.
    case tooLong(prompt: Int, requested: Int, limit: Int)
    case emptyPrompt
    case tokenOutOfRange(token: Int32, vocab: Int)
    /// The engine has stopped after a failure (or was shut down).
    case dead(String)
    /// The rows one rank would keep for this request exceed its KV pool.
    case tooLongForOneRank(rows: Int, capacity: Int, ranks: Int)

    public var description: String {
        switch self {
        case let .queueFull(limit): return "the server is busy: \(limit) requests are already waiting"
        case let .tooLong(prompt, requested, limit):
            return "This model's maximum context length is \(limit) tokens. However, you requested \(prompt + requested) tokens "
                + "(\(prompt) in the messages, \(requested) in the completion). Please reduce the length of the messages or completion."
        case .emptyPrompt: return "the prompt is empty"
        case let .tokenOutOfRange(token, vocab): return "token id \(token) is outside the vocabulary [0, \(vocab))"
        case let .dead(why): return "the engine is not running: \(why)"
        case let .tooLongForOneRank(rows, capacity, ranks):
            return "this request needs \(rows) KV positions on one rank but a rank's pool holds \(capacity) "
                + "(\(ranks) ranks; prompts below the sequence-parallel threshold stay on one rank): lower max_tokens or the prompt"
        }
    }
}

/// One request inside the engine: its tokens (prompt, then output), how many have keys and
/// values in the cache, and where those live (one rank's blocks, or every rank's after a
/// prefill across ranks).
final class Sequence {
    let id: Int
    let request: GenerationRequest
    let arrival: Date
    var tokens: [Int32]
    let promptCount: Int
    let maxTokens: Int
    /// Tokens whose keys and values are in the cache.
    var computed = 0
    /// Per rank: blocks and the positions they hold.
    var kv: [RankKV]
    /// The rank that stores this sequence's new rows.
    var appender = 0
    /// Whether the prompt was prefilled across the ranks (no prefix caching then).
    var sharded = false
    /// Whether the prompt's KV came from a chunk-reuse prefill (approximate: never offered to
    /// prefix caching).
    var blended = false
    /// A reuse prefill across the ranks drawn for an audit: checked against full prefill when
    /// its first token's logits arrive (from the batched step that ends the prompt).
    var pendingAudit: ChunkReuse.Preparation?
    /// Hashes of the full blocks registered so far (one-rank sequences).
    var blockHashes: [UInt64] = []
    /// The prefix-cache lookup's hashes and the token count they cover.
    var lookupHashes: (tokens: Int, hashes: [UInt64])?
    var sampler: Sampler
    var timings = GenerationTimings()
    var scheduledOnce = false
    let emit: @Sendable (GenerationEvent) -> Void
    var lastTokenTime: Date?

    init(id: Int, request: GenerationRequest, maxTokens: Int, ranks: Int, emit: @escaping @Sendable (GenerationEvent) -> Void) {
        self.id = id
        self.request = request
        self.arrival = Date()
        self.tokens = request.prompt
        self.promptCount = request.prompt.count
        self.maxTokens = maxTokens
        self.kv = Array(repeating: RankKV(), count: ranks)
        self.sampler = Sampler(options: request.sampling)
        self.emit = emit
        timings.promptTokens = request.prompt.count
    }

    var outputCount: Int { tokens.count - promptCount }
    var holdsBlocks: Bool { kv.contains { !$0.blocks.isEmpty } }
}
