import Testing
@testable import TorusParallel
import TorusTensor

@Suite struct SegmentAttentionTests {
    /// Long segments are cut into row groups so transfers are polled between kernel calls; the
    /// pieces give the same out, lse, dQ, dK, dV as one kernel call over the whole segment.
    @Test(arguments: [true, false])
    func rowGroupsGiveTheWholeSegmentsResult(causal: Bool) throws {
        let n = 2 * SegmentAttention.rowsPerPoll + 77, shape = AttentionShape(queryHeads: 2, keyValueHeads: 1, headDim: 4)
        var rng = SeededGenerator(seed: 3)
        let q = Tensor(zeros: [n, shape.queryWidth]), k = Tensor(zeros: [n, shape.keyValueWidth]), v = Tensor(zeros: [n, shape.keyValueWidth])
        let dOut = Tensor(zeros: [n, shape.queryWidth])
        for t in [q, k, v, dOut] { t.fillNormal(std: 1, generator: &rng) }
        let segment = SequenceSegment(start: 0, count: n, localRow: 0)
        #expect(SegmentAttention.rowGroups(segment).count == 3)
        let mask = AttentionMask(causal: causal)

        let out = Tensor(zeros: [n, shape.queryWidth]), lse = Tensor(zeros: [n, shape.queryHeads])
        BlockAttention.forward(q: q.pointer, k: k.pointer, v: v.pointer, queryCount: n, keyCount: n, shape: shape, mask: mask,
                               out: out.pointer, lse: lse.pointer)
        let blocks = SegmentAttention(shape: shape, causal: causal)
        let sOut = Tensor(zeros: [n, shape.queryWidth]), sLSE = Tensor(zeros: [n, shape.queryHeads])
        sLSE.fill(-.infinity)
        blocks.forward(querySegments: [segment], keySegments: [segment], q: q.pointer, k: k.pointer, v: v.pointer,
                       out: sOut.pointer, lse: sLSE.pointer, partOut: Tensor(zeros: [n, shape.queryWidth]),
                       partLSE: Tensor(zeros: [n, shape.queryHeads]), poll: [])
        #expect(maxDifference(out, sOut) < 1e-5 && maxDifference(lse, sLSE) < 1e-5)

        let rowDot = Tensor(zeros: [n, shape.queryHeads])
        BlockAttention.rowDot(dOut: dOut.pointer, out: out.pointer, rows: n, shape: shape, result: rowDot.pointer)
        let grads = (0..<2).map { _ in (Tensor(zeros: [n, shape.queryWidth]), Tensor(zeros: [n, shape.keyValueWidth]), Tensor(zeros: [n, shape.keyValueWidth])) }
        BlockAttention.backward(q: q.pointer, k: k.pointer, v: v.pointer, dOut: dOut.pointer, lse: lse.pointer, rowDot: rowDot.pointer,
                                queryCount: n, keyCount: n, shape: shape, mask: mask,
                                dq: grads[0].0.pointer, dk: grads[0].1.pointer, dv: grads[0].2.pointer)
        blocks.backward(querySegments: [segment], keySegments: [segment], q: q.pointer, k: k.pointer, v: v.pointer,
                        dOut: dOut.pointer, lse: lse.pointer, rowDot: rowDot.pointer,
                        dq: grads[1].0.pointer, dk: grads[1].1.pointer, dv: grads[1].2.pointer, poll: [])
        #expect(maxDifference(grads[0].0, grads[1].0) < 1e-4)
        #expect(maxDifference(grads[0].1, grads[1].1) < 1e-4)
        #expect(maxDifference(grads[0].2, grads[1].2) < 1e-4)
    }

    func maxDifference(_ a: Tensor, _ b: Tensor) -> Float {
        zip(a.array, b.array).map { $0 == $1 ? 0 : abs($0 - $1) }.max() ?? .infinity
    }
}
