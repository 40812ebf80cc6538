import Foundation
import Testing
import TorusModel
import TorusTensor
@testable import TorusServe

/// A decoding row's attention read in place from scattered pool blocks against the attention
/// of the same row over the keys gathered into one run (`BlockAttention`).
@Suite struct PagedAttentionTests {
    @Test(arguments: [(4, 2), (4, 4), (4, 1)])
    func aDecodingRowOverScatteredBlocksMatchesGatheredAttention(queryHeads: Int, kvHeads: Int) {
        let config = LlamaConfig(hiddenSize: 8 * queryHeads, intermediateSize: 16, numHiddenLayers: 2, numAttentionHeads: queryHeads,
                                 numKeyValueHeads: kvHeads, vocabSize: 16, maxPositionEmbeddings: 128)
        let cache = PagedKVCache(config: config, blockCount: 12, blockSize: 4, maxPositions: 128, maxRows: 4)
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
}
