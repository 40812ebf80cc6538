import CTorusKernels
import Foundation
import Testing
import TorusModel
import TorusTensor
@testable import TorusServe

/// A decoding row's attention read in place from scattered pool blocks against the attention
/// of the same row over the keys gathered into one run (`BlockAttention`).
/// In a bfloat16 pool both paths read the same rounded keys and values.
@Suite struct PagedAttentionTests {
    /// Head dimensions 8 and 64, groups of 1, 2 and 4 query heads a key/value head.
    @Test(arguments: [(4, 2, 8), (4, 4, 8), (4, 1, 8), (4, 4, 64), (4, 2, 64), (8, 2, 64), (4, 1, 64)], InferencePrecision.allCases)
    func aDecodingRowOverScatteredBlocksMatchesGatheredAttention(heads: (query: Int, kv: Int, dim: Int), precision: InferencePrecision) {
        let (queryHeads, kvHeads, headDim) = heads
        let config = LlamaConfig(hiddenSize: headDim * queryHeads, intermediateSize: 16, numHiddenLayers: 2, numAttentionHeads: queryHeads,
                                 numKeyValueHeads: kvHeads, vocabSize: 16, maxPositionEmbeddings: 128)
        let cache = PagedKVCache(config: config, blockCount: 12, blockSize: 4, maxPositions: 128, maxRows: 4, precision: precision)
        let shape = config.attentionShape, kw = shape.keyValueWidth
        var g = SeededGenerator(seed: 5)
        // Positions 0..<10 at local rows 0..<10 and positions 20..<27 at rows 10..<17 (a
        // sequence split across ranks leaves gaps), in blocks out of order.
        var kv = RankKV(blocks: [7, 2, 9, 0, 11])
        kv.append(start: 0, count: 10)
        kv.append(start: 20, count: 7)
        let k = Tensor(zeros: [17, kw]), v = Tensor(zeros: [17, kw])
        k.fillNormal(std: 1, generator: &g)
        v.fillNormal(std: 1, generator: &g)
        cache.store(layer: 1, blocks: kv.blocks, localRow: 0, count: 17, k: k, v: v, rowOffset: 0)
        let q = Tensor(zeros: [3, shape.queryWidth])
        q.fillNormal(std: 1, generator: &g)
        for (row, position) in [(0, 26), (1, 23), (2, 9)] {
            let out = Tensor(zeros: [3, shape.queryWidth]), lse = Tensor(zeros: [3, shape.queryHeads])
            let runs = cache.decodeRuns(kv: kv, position: position)
            let scores = Tensor(zeros: [shape.queryHeads * runs.keys])
            cache.attendRow(layer: 1, blocks: kv.blocks, runs: runs, q: q, out: out, lse: lse, row: row, scores: scores.pointer)
            let refOut = Tensor(zeros: [3, shape.queryWidth]), refLSE = Tensor(zeros: [3, shape.queryHeads])
            cache.attend(layer: 1, kv: kv, start: position, count: 1, q: q, out: refOut, lse: refLSE, rowOffset: row)
            for i in 0..<shape.queryWidth {
                #expect(abs(out[row * shape.queryWidth + i] - refOut[row * shape.queryWidth + i]) < 1e-5, "position \(position)")
            }
            for h in 0..<shape.queryHeads {
                #expect(abs(lse[row * shape.queryHeads + h] - refLSE[row * shape.queryHeads + h]) < 1e-5, "position \(position)")
            }
        }
        // A rank holding none of the sequence: zeros and -inf.
        let out = Tensor(zeros: [3, shape.queryWidth]), lse = Tensor(zeros: [3, shape.queryHeads])
        let none = Tensor(zeros: [1])
        cache.attendRow(layer: 1, blocks: [], runs: cache.decodeRuns(kv: RankKV(), position: 5), q: q, out: out, lse: lse, row: 0,
                        scores: none.pointer)
        #expect((0..<shape.queryHeads).allSatisfy { lse[$0] == -.infinity } && (0..<shape.queryWidth).allSatisfy { out[$0] == 0 })
    }

    /// A bfloat16 pool holds exactly the bfloat16 roundings of what it is given: its decoding
    /// attention equals an fp32 pool's over the rounded keys and values, and differs from the
    /// unrounded attention by about what the rounding moves it.
    @Test func aBFloat16PoolHoldsTheRoundedKeysAndValues() {
        let config = LlamaConfig(hiddenSize: 256, intermediateSize: 16, numHiddenLayers: 1, numAttentionHeads: 4,
                                 numKeyValueHeads: 2, vocabSize: 16, maxPositionEmbeddings: 128)
        let shape = config.attentionShape, kw = shape.keyValueWidth, n = 37
        func pool(_ p: InferencePrecision) -> PagedKVCache {
            PagedKVCache(config: config, blockCount: 16, blockSize: 8, maxPositions: 128, maxRows: 1, precision: p)
        }
        let half = pool(.bfloat16), full = pool(.float32), rounded = pool(.float32)
        #expect(PagedKVCache.bytesPerBlock(config: config, blockSize: 8, precision: .bfloat16) * 2
                == PagedKVCache.bytesPerBlock(config: config, blockSize: 8, precision: .float32))
        var g = SeededGenerator(seed: 9)
        let k = Tensor(zeros: [n, kw]), v = Tensor(zeros: [n, kw]), q = Tensor(zeros: [1, shape.queryWidth])
        k.fillNormal(std: 1, generator: &g)
        v.fillNormal(std: 1, generator: &g)
        q.fillNormal(std: 1, generator: &g)
        func bf16(_ x: Float) -> Float { torus_bf16_value(torus_bf16_round(x)) }
        let kr = Tensor(shape: [n, kw], values: (0..<(n * kw)).map { bf16(k[$0]) })
        let vr = Tensor(shape: [n, kw], values: (0..<(n * kw)).map { bf16(v[$0]) })
        var kv = RankKV(blocks: [5, 3, 14, 0, 9])
        kv.append(start: 0, count: n)
        half.store(layer: 0, blocks: kv.blocks, localRow: 0, count: n, k: k, v: v, rowOffset: 0)
        full.store(layer: 0, blocks: kv.blocks, localRow: 0, count: n, k: k, v: v, rowOffset: 0)
        rounded.store(layer: 0, blocks: kv.blocks, localRow: 0, count: n, k: kr, v: vr, rowOffset: 0)
        func attend(_ c: PagedKVCache) -> [Float] {
            let out = Tensor(zeros: [1, shape.queryWidth]), lse = Tensor(zeros: [1, shape.queryHeads])
            let runs = c.decodeRuns(kv: kv, position: n - 1)
            let scores = Tensor(zeros: [shape.queryHeads * runs.keys])
            c.attendRow(layer: 0, blocks: kv.blocks, runs: runs, q: q, out: out, lse: lse, row: 0, scores: scores.pointer)
            return (0..<shape.queryWidth).map { out[$0] } + (0..<shape.queryHeads).map { lse[$0] }
        }
        let a = attend(half), b = attend(rounded), c = attend(full)
        let exact = zip(a, b).map { abs($0 - $1) }.max() ?? 0
        let moved = zip(a, c).map { abs($0 - $1) }.max() ?? 0
        // Measured: 0 (the same arithmetic on the same values; another CPU's vector code may sum
        // in another order, hence 1e-6) and 0.0015.
        #expect(exact < 1e-6, "bfloat16 pool against fp32 pool of rounded values: \(exact)")
        #expect(moved > 0 && moved < 0.005, "bfloat16 pool against unrounded values: \(moved)")
    }
}
