import Foundation
import CTorusKernels
import TorusModel
import TorusTensor

/// The memory of one rank's paged KV cache: for every layer, keys and values of `blockCount`
/// blocks of `blockSize` rows (fp32, or bfloat16 for half the bytes), scratch space to line up
/// a sequence's blocks for attention, and buffers for partial attention results.
public final class PagedKVCache: @unchecked Sendable {
    public let blockCount: Int
    public let blockSize: Int
    public let maxPositions: Int
    /// The element type of the stored keys and values (vLLM's `kv_cache_dtype`).
    public let precision: InferencePrecision
    let shape: AttentionShape
    // Per layer [blockCount * blockSize, Hkv*dh] elements of `precision`; a bfloat16 pool uses
    // its tensors' memory as UInt16 (two to a Float slot), through `halves`.
    let keys: [Tensor]
    let values: [Tensor]
    let scratchK: Tensor   // [maxPositions, Hkv*dh]
    let scratchV: Tensor
    let partOut: Tensor    // [maxRows, Hq*dh]
    let partLSE: Tensor    // [maxRows, Hq]
    /// The key runs of the sequence being attended (kept to reuse its storage; engine thread only).
    private var runs: [BlockAttention.KeyRun] = []

    /// Bytes one block takes over all layers (keys and values).
    public static func bytesPerBlock(config: LlamaConfig, blockSize: Int, precision: InferencePrecision = .float32) -> Int {
        2 * config.numHiddenLayers * blockSize * config.attentionShape.keyValueWidth * elementBytes(precision)
    }

    static func elementBytes(_ precision: InferencePrecision) -> Int { precision == .bfloat16 ? 2 : 4 }

    public init(config: LlamaConfig, blockCount: Int, blockSize: Int, maxPositions: Int, maxRows: Int,
                precision: InferencePrecision = .float32) {
        self.blockCount = blockCount
        self.blockSize = blockSize
        self.maxPositions = maxPositions
        self.precision = precision
        shape = config.attentionShape
        let kw = shape.keyValueWidth
        // Float slots per pool row (key/value widths are whole heads, so even).
        let slots = kw * Self.elementBytes(precision) / MemoryLayout<Float>.size
        // Pages are mapped as blocks are first written (resident memory follows use), unless `populate` backs them all.
        keys = (0..<config.numHiddenLayers).map { _ in Tensor(lazyZeros: [blockCount * blockSize, slots]) }
        values = (0..<config.numHiddenLayers).map { _ in Tensor(lazyZeros: [blockCount * blockSize, slots]) }
        scratchK = Tensor(lazyZeros: [maxPositions, kw])
        scratchV = Tensor(lazyZeros: [maxPositions, kw])
        partOut = Tensor(zeros: [maxRows, shape.queryWidth])
        partLSE = Tensor(zeros: [maxRows, shape.queryHeads])
    }

    /// Backs the whole pool with memory now (contents unchanged), so that serving takes no
    /// page fault when it first writes a block: on the VM measured, a first touch cost up to
    /// ~9 us per 4 KiB (2 GiB took 4.8 s), and with the pool backed at startup three alternating
    /// fresh servers gave c=8 1,767-1,822 against 1,574-1,722 and c=32 1,822-1,972 against
    /// 1,725-1,874 output tokens/s. Resident memory becomes the pool's size, as vLLM's does.
    /// False where the kernel cannot (pages are then mapped on first write).
    @discardableResult
    func populate() -> Bool {
        (keys + values).allSatisfy { $0.populate(from: 0, count: $0.count * 4) }
    }

    /// Stores `count` rows of keys and values (from row `rowOffset` of `k`, `v`) at local rows
    /// `localRow..<localRow+count` of a sequence whose blocks are `blocks`.
    func store(layer: Int, blocks: [Int32], localRow: Int, count: Int, k: Tensor, v: Tensor, rowOffset: Int) {
        let kw = shape.keyValueWidth
        var p = localRow, r = rowOffset
        while p < localRow + count {
            let inBlock = p % blockSize, n = min(blockSize - inBlock, localRow + count - p)
            let dst = (Int(blocks[p / blockSize]) * blockSize + inBlock) * kw
            switch precision {
            case .float32:
                (keys[layer].pointer + dst).update(from: k.pointer + r * kw, count: n * kw)
                (values[layer].pointer + dst).update(from: v.pointer + r * kw, count: n * kw)
            case .bfloat16:
                torus_bf16_rows(k.pointer + r * kw, halves(keys[layer]) + dst, n, kw)
                torus_bf16_rows(v.pointer + r * kw, halves(values[layer]) + dst, n, kw)
            }
            p += n
            r += n
        }
    }

    /// A bfloat16 pool tensor's memory as its UInt16 elements.
    private func halves(_ t: Tensor) -> UnsafeMutablePointer<UInt16> {
        UnsafeMutableRawPointer(t.pointer).assumingMemoryBound(to: UInt16.self)
    }

    /// Keys and values of local rows `from..<from+count` in fp32: in place when the pool is fp32
    /// and their blocks follow each other in it, else copied (widened from bfloat16) into the
    /// scratch space at the same rows (so the runs of one sequence never overwrite each other).
    private func rows(layer: Int, blocks: [Int32], from: Int, count: Int) -> (k: UnsafePointer<Float>, v: UnsafePointer<Float>) {
        let kw = shape.keyValueWidth
        let first = from / blockSize, last = (from + count - 1) / blockSize
        let base = Int(blocks[first]) * blockSize + from % blockSize
        if precision == .float32, (first...last).allSatisfy({ blocks[$0] == blocks[first] + Int32($0 - first) }) {
            return (UnsafePointer(keys[layer].pointer + base * kw), UnsafePointer(values[layer].pointer + base * kw))
        }
        var p = from
        while p < from + count {
            let inBlock = p % blockSize, n = min(blockSize - inBlock, from + count - p)
            let src = (Int(blocks[p / blockSize]) * blockSize + inBlock) * kw
            switch precision {
            case .float32:
                (scratchK.pointer + p * kw).update(from: keys[layer].pointer + src, count: n * kw)
                (scratchV.pointer + p * kw).update(from: values[layer].pointer + src, count: n * kw)
            case .bfloat16:
                torus_bf16_widen(halves(keys[layer]) + src, scratchK.pointer + p * kw, n * kw)
                torus_bf16_widen(halves(values[layer]) + src, scratchV.pointer + p * kw, n * kw)
            }
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
                               partOut: partOut.pointer, partLSE: partLSE.pointer, products: precision == .bfloat16 ? .bfloat16 : .float32)
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
            switch precision {
            case .float32:
                torus_decode_attention(q.pointer + row * qw, keys[layer].pointer, values[layer].pointer, blocks.baseAddress, blockSize,
                                       runs.rows, runs.counts, runs.rows.count, hq, shape.keyValueHeads, shape.headDim, shape.scale,
                                       out.pointer + row * qw, lse.pointer + row * hq, scores)
            case .bfloat16:
                torus_decode_attention_bf16(q.pointer + row * qw, halves(keys[layer]), halves(values[layer]), blocks.baseAddress,
                                            blockSize, runs.rows, runs.counts, runs.rows.count, hq, shape.keyValueHeads,
                                            shape.headDim, shape.scale, out.pointer + row * qw, lse.pointer + row * hq, scores)
            }
        }
    }
}
