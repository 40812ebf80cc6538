import CTorusKernels
import TorusModel
import TorusTensor

/// The memory of one rank's paged KV cache: for every layer, keys and values of `blockCount`
/// blocks of `blockSize` rows, scratch space to line up a sequence's blocks for attention, and
/// buffers for partial attention results.
public final class PagedKVCache: @unchecked Sendable {
    public let blockCount: Int
    public let blockSize: Int
    public let maxPositions: Int
    let shape: AttentionShape
    let keys: [Tensor]     // per layer [blockCount * blockSize, Hkv*dh]
    let values: [Tensor]
    let scratchK: Tensor   // [maxPositions, Hkv*dh]
    let scratchV: Tensor
    let partOut: Tensor    // [maxRows, Hq*dh]
    let partLSE: Tensor    // [maxRows, Hq]
    /// The key runs of the sequence being attended (kept to reuse its storage; engine thread only).
    private var runs: [BlockAttention.KeyRun] = []

    /// Bytes one block takes over all layers (keys and values).
    public static func bytesPerBlock(config: LlamaConfig, blockSize: Int) -> Int {
        2 * config.numHiddenLayers * blockSize * config.attentionShape.keyValueWidth * MemoryLayout<Float>.size
    }

    public init(config: LlamaConfig, blockCount: Int, blockSize: Int, maxPositions: Int, maxRows: Int) {
        self.blockCount = blockCount
        self.blockSize = blockSize
        self.maxPositions = maxPositions
        shape = config.attentionShape
        let kw = shape.keyValueWidth
        // Pages are mapped as blocks are first written: resident memory follows use, not the budget.
        keys = (0..<config.numHiddenLayers).map { _ in Tensor(lazyZeros: [blockCount * blockSize, kw]) }
        values = (0..<config.numHiddenLayers).map { _ in Tensor(lazyZeros: [blockCount * blockSize, kw]) }
        scratchK = Tensor(lazyZeros: [maxPositions, kw])
        scratchV = Tensor(lazyZeros: [maxPositions, kw])
        partOut = Tensor(zeros: [maxRows, shape.queryWidth])
        partLSE = Tensor(zeros: [maxRows, shape.queryHeads])
    }

    /// Stores `count` rows of keys and values (from row `rowOffset` of `k`, `v`) at local rows
    /// `localRow..<localRow+count` of a sequence whose blocks are `blocks`.
    func store(layer: Int, blocks: [Int32], localRow: Int, count: Int, k: Tensor, v: Tensor, rowOffset: Int) {
        let kw = shape.keyValueWidth
        var p = localRow, r = rowOffset
        while p < localRow + count {
            let inBlock = p % blockSize, n = min(blockSize - inBlock, localRow + count - p)
            let dst = (Int(blocks[p / blockSize]) * blockSize + inBlock) * kw
            (keys[layer].pointer + dst).update(from: k.pointer + r * kw, count: n * kw)
            (values[layer].pointer + dst).update(from: v.pointer + r * kw, count: n * kw)
            p += n
            r += n
        }
    }

    /// Keys and values of local rows `from..<from+count`: in place when their blocks follow
    /// each other in the pool, else copied into the scratch space at the same rows (so the runs
    /// of one sequence never overwrite each other).
    private func rows(layer: Int, blocks: [Int32], from: Int, count: Int) -> (k: UnsafePointer<Float>, v: UnsafePointer<Float>) {
        let kw = shape.keyValueWidth
        let first = from / blockSize, last = (from + count - 1) / blockSize
        let base = Int(blocks[first]) * blockSize + from % blockSize
        if (first...last).allSatisfy({ blocks[$0] == blocks[first] + Int32($0 - first) }) {
            return (UnsafePointer(keys[layer].pointer + base * kw), UnsafePointer(values[layer].pointer + base * kw))
        }
        var p = from
        while p < from + count {
            let inBlock = p % blockSize, n = min(blockSize - inBlock, from + count - p)
            let src = (Int(blocks[p / blockSize]) * blockSize + inBlock) * kw
            (scratchK.pointer + p * kw).update(from: keys[layer].pointer + src, count: n * kw)
            (scratchV.pointer + p * kw).update(from: values[layer].pointer + src, count: n * kw)
            p += n
        }
        return (UnsafePointer(scratchK.pointer + from * kw), UnsafePointer(scratchV.pointer + from * kw))
    }

    /// Attention of `count` query rows (rows `rowOffset...` of `q`, at positions
    /// `start..<start+count`) against this rank's part of the sequence (`kv`), causal by
    /// position, into `out` and `lse` (a row that sees no key here gets lse = -inf, out = 0).
    func attend(layer: Int, kv: RankKV, start: Int, count: Int, q: Tensor, out: Tensor, lse: Tensor, rowOffset: Int) {
        let qw = shape.queryWidth, hq = shape.queryHeads
        runs.removeAll(keepingCapacity: true)
        for s in kv.segments where s.start <= start + count - 1 {
            let (k, v) = rows(layer: layer, blocks: kv.blocks, from: s.localRow, count: s.count)
            runs.append(BlockAttention.KeyRun(k: k, v: v, start: s.start, count: s.count))
        }
        BlockAttention.forward(q: q.pointer + rowOffset * qw, queryCount: count, queryStart: start, runs: runs, shape: shape,
                               out: out.pointer + rowOffset * qw, lse: lse.pointer + rowOffset * hq,
                               partOut: partOut.pointer, partLSE: partLSE.pointer)
    }

    /// The local rows a decoding row at `position` sees (every key of `kv` up to it), found
    /// once per step for all layers.
    struct DecodeRuns {
        var rows: [Int] = []
        var counts: [Int] = []
        var keys: Int { counts.reduce(0, +) }
    }

    func decodeRuns(kv: RankKV, position: Int) -> DecodeRuns {
        var runs = DecodeRuns()
        for s in kv.segments where s.start <= position {
            runs.rows.append(s.localRow)
            runs.counts.append(min(s.count, position - s.start + 1))
        }
        return runs
    }

    /// `attend` for one decoding row (row `row` of `q`) over the keys `runs` names, read in
    /// place in their blocks; `scores` is scratch for `queryHeads * runs.keys` floats. Safe to
    /// run for several sequences at once.
    func attendRow(layer: Int, blocks: [Int32], runs: DecodeRuns, q: Tensor, out: Tensor, lse: Tensor, row: Int,
                   scores: UnsafeMutablePointer<Float>) {
        let qw = shape.queryWidth, hq = shape.queryHeads
        blocks.withUnsafeBufferPointer { blocks in
            torus_decode_attention(q.pointer + row * qw, keys[layer].pointer, values[layer].pointer, blocks.baseAddress, blockSize,
                                   runs.rows, runs.counts, runs.rows.count, hq, shape.keyValueHeads, shape.headDim, shape.scale,
                                   out.pointer + row * qw, lse.pointer + row * hq, scores)
        }
    }
}
