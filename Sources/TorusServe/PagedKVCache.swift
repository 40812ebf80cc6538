import TorusModel
import TorusTensor

/// The memory of a paged KV cache: for every layer, keys and values of `blockCount` blocks of
/// `blockSize` positions, and scratch space to line up one sequence's blocks for attention.
public final class PagedKVCache: @unchecked Sendable {
    public let blockCount: Int
    public let blockSize: Int
    public let maxPositions: Int
    let shape: AttentionShape
    let keys: [Tensor]     // per layer [blockCount * blockSize, Hkv*dh]
    let values: [Tensor]
    let scratchK: Tensor   // [maxPositions, Hkv*dh]
    let scratchV: Tensor

    /// Bytes one block takes over all layers (keys and values).
    public static func bytesPerBlock(config: LlamaConfig, blockSize: Int) -> Int {
        2 * config.numHiddenLayers * blockSize * config.attentionShape.keyValueWidth * MemoryLayout<Float>.size
    }

    public init(config: LlamaConfig, blockCount: Int, blockSize: Int, maxPositions: Int) {
        self.blockCount = blockCount
        self.blockSize = blockSize
        self.maxPositions = maxPositions
        shape = config.attentionShape
        let kw = shape.keyValueWidth
        keys = (0..<config.numHiddenLayers).map { _ in Tensor(zeros: [blockCount * blockSize, kw]) }
        values = (0..<config.numHiddenLayers).map { _ in Tensor(zeros: [blockCount * blockSize, kw]) }
        scratchK = Tensor(zeros: [maxPositions, kw])
        scratchV = Tensor(zeros: [maxPositions, kw])
    }

    /// Bytes of KV blocks held.
    public var bytes: Int { 2 * keys.count * blockCount * blockSize * shape.keyValueWidth * 4 }

    /// Stores the keys and values of `count` rows (at `rowOffset` of `k`, `v`) for positions
    /// `start..<start + count` of a sequence whose blocks are `blocks`.
    func store(layer: Int, blocks: [Int32], start: Int, count: Int, k: Tensor, v: Tensor, rowOffset: Int) {
        let kw = shape.keyValueWidth
        var p = start, r = rowOffset
        while p < start + count {
            let inBlock = p % blockSize, n = min(blockSize - inBlock, start + count - p)
            let dst = (Int(blocks[p / blockSize]) * blockSize + inBlock) * kw
            (keys[layer].pointer + dst).update(from: k.pointer + r * kw, count: n * kw)
            (values[layer].pointer + dst).update(from: v.pointer + r * kw, count: n * kw)
            p += n
            r += n
        }
    }

    /// Attention of `count` query rows (at `rowOffset` of `q`, positions `start..<start+count`)
    /// against positions `0..<start+count` of the sequence in `blocks`, into `out` and `lse`.
    func attend(layer: Int, blocks: [Int32], start: Int, count: Int, q: Tensor, out: Tensor, lse: Tensor, rowOffset: Int) {
        let kw = shape.keyValueWidth, length = start + count
        let used = (length + blockSize - 1) / blockSize
        // Blocks that follow each other in the pool are attended in place; else line them up.
        let contiguous = (0..<used).allSatisfy { blocks[$0] == blocks[0] + Int32($0) }
        let kBase: UnsafePointer<Float>, vBase: UnsafePointer<Float>
        if contiguous {
            kBase = UnsafePointer(keys[layer].pointer + Int(blocks[0]) * blockSize * kw)
            vBase = UnsafePointer(values[layer].pointer + Int(blocks[0]) * blockSize * kw)
        } else {
            for i in 0..<used {
                let n = min(blockSize, length - i * blockSize)
                let src = Int(blocks[i]) * blockSize * kw
                (scratchK.pointer + i * blockSize * kw).update(from: keys[layer].pointer + src, count: n * kw)
                (scratchV.pointer + i * blockSize * kw).update(from: values[layer].pointer + src, count: n * kw)
            }
            kBase = UnsafePointer(scratchK.pointer)
            vBase = UnsafePointer(scratchV.pointer)
        }
        BlockAttention.forward(q: q.pointer + rowOffset * shape.queryWidth, k: kBase, v: vBase, queryCount: count, keyCount: length,
                               shape: shape, mask: AttentionMask(causal: true, queryOffset: start, keyOffset: 0),
                               out: out.pointer + rowOffset * shape.queryWidth, lse: lse.pointer + rowOffset * shape.queryHeads)
    }
}
