import Foundation
import TorusTensor

/// Collective operations that sharded decoding needs from the ranks holding one sequence.
public protocol ShardGroup: AnyObject {
    var rank: Int { get }
    var size: Int { get }
    /// Every rank's `values` (all the same length), in rank order.
    func allGather(_ values: [Float]) throws -> [[Float]]
}

/// The part of one sequence's KV cache this rank holds: runs of global positions (segments)
/// with their rotated keys and values for every layer.
public final class ShardedKVCache: @unchecked Sendable {
    public struct Segment: Sendable, Equatable {
        public var start: Int
        public var count: Int
        public var localRow: Int
    }
    public let capacity: Int
    public private(set) var segments: [Segment] = []
    public private(set) var rows = 0
    let keys: [Tensor]
    let values: [Tensor]

    public init(config: LlamaConfig, capacity: Int) {
        self.capacity = capacity
        let width = config.numKeyValueHeads * config.resolvedHeadDim
        keys = (0..<config.numHiddenLayers).map { _ in Tensor(zeros: [capacity, width]) }
        values = (0..<config.numHiddenLayers).map { _ in Tensor(zeros: [capacity, width]) }
    }

    /// Reserves rows for positions [start, start + count) and returns their first local row.
    func append(start: Int, count: Int) throws -> Int {
        guard rows + count <= capacity else { throw ModelInputError.sequenceTooLong(length: rows + count, limit: capacity) }
        if var last = segments.last, last.start + last.count == start {
            last.count += count
            segments[segments.count - 1] = last
        } else {
            segments.append(Segment(start: start, count: count, localRow: rows))
        }
        defer { rows += count }
        return rows
    }
}

extension LlamaModel {
    /// Prefill of this rank's part of a prompt split over the ranks of a sequence-parallel
    /// group: runs the model on the local rows with `attention` (which computes exact causal
    /// attention with the other ranks), leaves the local keys and values in `cache`, and
    /// returns the logits of the prompt's last position (identical on every rank).
    public func prefillSharded(localTokens: [Int32], attention: SequenceAttention, cache: ShardedKVCache,
                               group: ShardGroup) throws -> [Float] {
        let positions = attention.localPositions
        guard positions.count == localTokens.count else {
            throw ModelInputError.shapeMismatch("\(localTokens.count) local tokens for \(positions.count) local positions")
        }
        // Rows in local order; `append` joins consecutive positions into one segment.
        for p in positions { _ = try cache.append(start: Int(p), count: 1) }
        // Keep each layer's rotated K, V (in local row order, segment by segment) as the forward runs.
        let output = try prefillLayers(localTokens: localTokens, attention: attention) { l, k, v in
            cache.keys[l].pointer.update(from: k.pointer, count: k.count)
            cache.values[l].pointer.update(from: v.pointer, count: v.count)
        }
        // The rank holding the last position runs the head on that row alone and shares its logits.
        let last = Int32(positions.max() ?? 0)
        let lastGlobal = try group.allGather([Float(last)]).map { Int($0[0]) }.max() ?? 0
        var mine = [Float](repeating: 0, count: config.vocabSize + 1)
        if let row = positions.firstIndex(of: Int32(lastGlobal)) {
            let d = config.hiddenSize
            mine[0] = 1
            mine.replaceSubrange(1..., with: headLogits(output.view(offset: row * d, shape: [1, d]), rows: 1).logits.array)
        }
        guard let owner = try group.allGather(mine).first(where: { $0[0] == 1 }) else {
            throw ModelInputError.shapeMismatch("no rank holds the last prompt position")
        }
        return Array(owner.dropFirst())
    }

    /// One decoding step at global `position`: every rank runs the model for the new token;
    /// attention merges the partials of every rank's cache part in rank order; the rank with
    /// `appendHere` stores the new key and value. Returns the logits (identical on every rank).
    public func decodeSharded(token: Int32, position: Int, cache: ShardedKVCache, group: ShardGroup,
                              appendHere: Bool) throws -> [Float] {
        try requireWhole(for: "sharded decoding")
        try checkTokens([token])
        guard position < config.maxPositionEmbeddings else {
            throw ModelInputError.sequenceTooLong(length: position + 1, limit: config.maxPositionEmbeddings)
        }
        rotary.ensure(capacity: position + 1)
        let shape = self.shape, kw = shape.keyValueWidth, qw = shape.queryWidth, hq = shape.queryHeads
        let newRow = appendHere ? try cache.append(start: position, count: 1) : -1
        var x = embed([token])
        let part = Tensor(zeros: [1, qw]), partLSE = Tensor(zeros: [1, hq])
        let packed = Tensor(zeros: [AttentionMerge.packedCount(rows: 1, heads: hq, headDim: shape.headDim)])
        for (l, w) in weights.layers.enumerated() {
            x = try [Int32(position)].withUnsafeBufferPointer { pos in
                try layerForward(w, x: x, rows: 1, positions: pos.baseAddress!) { q, k, v, o, lse in
                    if newRow >= 0 {
                        (cache.keys[l].pointer + newRow * kw).update(from: k.pointer, count: kw)
                        (cache.values[l].pointer + newRow * kw).update(from: v.pointer, count: kw)
                    }
                    let runs = cache.segments.map {
                        BlockAttention.KeyRun(k: cache.keys[l].pointer + $0.localRow * kw, v: cache.values[l].pointer + $0.localRow * kw,
                                              start: $0.start, count: $0.count)
                    }
                    BlockAttention.forward(q: q.pointer, queryCount: 1, queryStart: position, runs: runs, shape: shape,
                                           out: o.pointer, lse: lse.pointer, partOut: part.pointer, partLSE: partLSE.pointer)
                    // Every rank merges every rank's partial in rank order: identical results everywhere.
                    AttentionMerge.pack(out: o.pointer, lse: lse.pointer, rows: 1, heads: hq, headDim: shape.headDim, into: packed.pointer)
                    let all = try group.allGather(packed.array).flatMap { $0 }
                    all.withUnsafeBufferPointer {
                        AttentionMerge.mergePacked($0.baseAddress!, parts: all.count / packed.count, out: o.pointer, lse: lse.pointer,
                                                   rows: 1, heads: hq, headDim: shape.headDim)
                    }
                }.out
            }
        }
        return headLogits(x, rows: 1).logits.array
    }
}

/// Passes attention through to the sequence-parallel method and hands each layer's local
/// keys and values (rows in local order) to `store` first.
final class CachingAttention: SequenceAttention {
    let inner: SequenceAttention
    let store: (_ layer: Int, _ k: Tensor, _ v: Tensor) -> Void
    var layer = 0

    init(inner: SequenceAttention, store: @escaping (_ layer: Int, _ k: Tensor, _ v: Tensor) -> Void) {
        self.inner = inner
        self.store = store
    }

    var localPositions: [Int32] { inner.localPositions }

    func forward(q: Tensor, k: Tensor, v: Tensor) throws -> (out: Tensor, lse: Tensor) {
        store(layer, k, v)
        layer += 1
        return try inner.forward(q: q, k: k, v: v)
    }

    func backward(q: Tensor, k: Tensor, v: Tensor, out: Tensor, lse: Tensor, dOut: Tensor) throws -> (dq: Tensor, dk: Tensor, dv: Tensor) {
        throw ModelInputError.shapeMismatch("prefill has no backward pass")
    }
}

extension LlamaModel {
    /// The decoder layers over this rank's rows of one sequence split across ranks (no head):
    /// `attention` computes exact causal attention with the other ranks, and `store` receives
    /// every layer's rotated keys and values of the local rows (local order) to keep them.
    /// Returns the hidden states of the local rows.
    public func prefillLayers(localTokens: [Int32], attention: SequenceAttention,
                              store: @escaping (_ layer: Int, _ k: Tensor, _ v: Tensor) -> Void) throws -> Tensor {
        try requireWhole(for: "sequence-parallel prefill")
        guard attention.localPositions.count == localTokens.count else {
            throw ModelInputError.shapeMismatch("\(localTokens.count) local tokens for \(attention.localPositions.count) local positions")
        }
        let recorder = CachingAttention(inner: attention, store: store)
        return try forward(tokens: localTokens, batch: 1, seqLen: localTokens.count, keepActivations: false, attention: recorder,
                           head: false).output
    }
}
