import TorusTensor

/// Rotated keys and values of one sequence for every layer, for incremental decoding.
public final class KVCache: @unchecked Sendable {
    /// Positions the cache can hold.
    public let capacity: Int
    /// Positions filled so far.
    public internal(set) var length: Int = 0
    /// Per layer, [capacity, kvHeads * headDim].
    public let keys: [Tensor]
    public let values: [Tensor]

    public init(config: LlamaConfig, capacity: Int) {
        self.capacity = capacity
        let width = config.numKeyValueHeads * config.resolvedHeadDim
        keys = (0..<config.numHiddenLayers).map { _ in Tensor(zeros: [capacity, width]) }
        values = (0..<config.numHiddenLayers).map { _ in Tensor(zeros: [capacity, width]) }
    }

    /// Forgets every position (the memory is kept).
    public func reset() { length = 0 }
}

extension LlamaModel {
    /// Runs `tokens` as the continuation of the sequence in `cache` (appending their keys and
    /// values) and returns logits [tokens.count, vocab] for them, or with `lastOnly` [1, vocab]
    /// for the last token only (all a prompt's prefill needs before sampling).
    public func forward(tokens: [Int32], cache: KVCache, lastOnly: Bool = false) throws -> Tensor {
        try requireWhole(for: "generation with a KV cache")
        let n = tokens.count, start = cache.length
        guard n > 0 else { throw ModelInputError.shapeMismatch("no tokens to run") }
        guard start + n <= cache.capacity else {
            throw ModelInputError.sequenceTooLong(length: start + n, limit: cache.capacity)
        }
        guard start + n <= config.maxPositionEmbeddings else {
            throw ModelInputError.sequenceTooLong(length: start + n, limit: config.maxPositionEmbeddings)
        }
        try checkTokens(tokens)
        rotary.ensure(capacity: start + n)
        let positions = (0..<n).map { Int32(start + $0) }
        let kw = shape.keyValueWidth, shape = self.shape
        var x = embed(tokens)
        for (l, w) in weights.layers.enumerated() {
            let cachedK = cache.keys[l], cachedV = cache.values[l]
            x = positions.withUnsafeBufferPointer { pos in
                layerForward(w, x: x, rows: n, positions: pos.baseAddress!) { q, k, v, o, lse in
                    (cachedK.pointer + start * kw).update(from: k.pointer, count: n * kw)
                    (cachedV.pointer + start * kw).update(from: v.pointer, count: n * kw)
                    BlockAttention.forward(q: q.pointer, k: cachedK.pointer, v: cachedV.pointer, queryCount: n, keyCount: start + n,
                                           shape: shape, mask: AttentionMask(causal: true, queryOffset: start, keyOffset: 0),
                                           out: o.pointer, lse: lse.pointer)
                }.out
            }
        }
        cache.length = start + n
        let d = config.hiddenSize
        return lastOnly ? headLogits(x.view(offset: (n - 1) * d, shape: [1, d]), rows: 1).logits : headLogits(x, rows: n).logits
    }
}
