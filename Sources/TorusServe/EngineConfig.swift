import TorusModel

/// How the engine sizes its cache and steps.
public struct EngineConfig: Sendable, Equatable {
    /// Positions per KV block.
    public var blockSize: Int
    /// Memory for KV blocks; the pool gets as many blocks as fit.
    public var kvCacheBytes: Int
    /// The longest sequence (prompt plus output) served; at most `max_position_embeddings`.
    public var maxModelLength: Int?
    public var limits: SchedulerLimits
    /// The element type of the paged KV cache: fp32, or bfloat16 (half the bytes per block, so
    /// twice the blocks in the same memory and half the bytes a decoding step reads).
    public var kvCachePrecision: InferencePrecision
    /// Full prompt blocks are hashed and reused by later prompts with the same prefix (vLLM's
    /// `--enable-prefix-caching`, on by default); off, every prompt is computed in full.
    public var enablePrefixCaching: Bool
    /// The whole KV pool is backed with memory when the engine starts, as vLLM's is, so that no
    /// step waits on the page faults of blocks written for the first time; off, pages are mapped
    /// as blocks are first written and resident memory follows use.
    public var residentKVCache: Bool

    public init(blockSize: Int = 16, kvCacheBytes: Int = 1 << 30, maxModelLength: Int? = nil, limits: SchedulerLimits = .init(),
                kvCachePrecision: InferencePrecision = .float32, enablePrefixCaching: Bool = true, residentKVCache: Bool = false) {
        self.enablePrefixCaching = enablePrefixCaching
        self.residentKVCache = residentKVCache
        self.blockSize = blockSize
        self.kvCacheBytes = kvCacheBytes
        self.maxModelLength = maxModelLength
        self.limits = limits
        self.kvCachePrecision = kvCachePrecision
    }
}

/// A serving configuration the model cannot run with, naming the setting.
public struct EngineConfigError: Error, CustomStringConvertible {
    public let description: String
    public init(_ description: String) { self.description = description }
}
