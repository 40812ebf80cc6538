import Foundation
import Testing
import TorusTensor

struct AttentionCase: CustomTestStringConvertible, Sendable {
    let nq: Int, nk: Int, hq: Int, hkv: Int, d: Int, causal: Bool, qOff: Int, kOff: Int
    var testDescription: String { "nq=\(nq) nk=\(nk) heads=\(hq)/\(hkv) d=\(d) causal=\(causal) offsets=\(qOff)/\(kOff)" }
    var shape: AttentionShape { AttentionShape(queryHeads: hq, keyValueHeads: hkv, headDim: d) }
    var mask: AttentionMask { AttentionMask(causal: causal, queryOffset: qOff, keyOffset: kOff) }
}

@Suite struct AttentionTests {
    static let cases: [AttentionCase] = [
        AttentionCase(nq: 5, nk: 5, hq: 2, hkv: 2, d: 4, causal: false, qOff: 0, kOff: 0),
        AttentionCase(nq: 5, nk: 5, hq: 2, hkv: 2, d: 4, causal: true, qOff: 0, kOff: 0),
        AttentionCase(nq: 6, nk: 4, hq: 4, hkv: 2, d: 4, causal: true, qOff: 0, kOff: 0),
        AttentionCase(nq: 4, nk: 6, hq: 4, hkv: 1, d: 6, causal: false, qOff: 0, kOff: 0),
        // A query block that starts inside a key block: some rows see none of these keys.
        AttentionCase(nq: 5, nk: 4, hq: 2, hkv: 1, d: 4, causal: true, qOff: 3, kOff: 5),
    ]

    @Test(arguments: cases)
    func forwardAndBackwardMatchReference(_ c: AttentionCase) {
        let q = Ref.random(c.nq * c.hq * c.d, seed: 21), k = Ref.random(c.nk * c.hkv * c.d, seed: 22)
        let v = Ref.random(c.nk * c.hkv * c.d, seed: 23), r = Ref.random(c.nq * c.hq * c.d, seed: 24)
        let qt = Ref.tensor(q, [c.nq, c.hq * c.d]), kt = Ref.tensor(k, [c.nk, c.hkv * c.d]), vt = Ref.tensor(v, [c.nk, c.hkv * c.d])
        let out = Tensor(zeros: [c.nq, c.hq * c.d]), lse = Tensor(zeros: [c.nq, c.hq])
        BlockAttention.forward(q: qt.pointer, k: kt.pointer, v: vt.pointer, queryCount: c.nq, keyCount: c.nk,
                               shape: c.shape, mask: c.mask, out: out.pointer, lse: lse.pointer)
        let ref = Ref.attention(q: q, k: k, v: v, nq: c.nq, nk: c.nk, hq: c.hq, hkv: c.hkv, d: c.d,
                                causal: c.causal, qOff: c.qOff, kOff: c.kOff)
        #expect(Ref.relativeError(out.array, ref.out) < 1e-5)
        for i in 0..<lse.count {
            if ref.lse[i] == -.infinity { #expect(lse[i] == -.infinity) } else { #expect(abs(Double(lse[i]) - ref.lse[i]) < 1e-5) }
        }
        let dO = Ref.tensor(r, [c.nq, c.hq * c.d]), rowDot = Tensor(zeros: [c.nq, c.hq])
        BlockAttention.rowDot(dOut: dO.pointer, out: out.pointer, rows: c.nq, shape: c.shape, result: rowDot.pointer)
        let dq = Tensor(zeros: [c.nq, c.hq * c.d]), dk = Tensor(zeros: [c.nk, c.hkv * c.d]), dv = Tensor(zeros: [c.nk, c.hkv * c.d])
        BlockAttention.backward(q: qt.pointer, k: kt.pointer, v: vt.pointer, dOut: dO.pointer, lse: lse.pointer, rowDot: rowDot.pointer,
                                queryCount: c.nq, keyCount: c.nk, shape: c.shape, mask: c.mask,
                                dq: dq.pointer, dk: dk.pointer, dv: dv.pointer)
        func loss(_ q: [Double], _ k: [Double], _ v: [Double]) -> Double {
            Ref.dot(Ref.attention(q: q, k: k, v: v, nq: c.nq, nk: c.nk, hq: c.hq, hkv: c.hkv, d: c.d,
                                  causal: c.causal, qOff: c.qOff, kOff: c.kOff).out, r)
        }
        #expect(Ref.relativeError(dq.array, Ref.numericGradient(q) { loss($0, k, v) }) < 1e-4)
        #expect(Ref.relativeError(dk.array, Ref.numericGradient(k) { loss(q, $0, v) }) < 1e-4)
        #expect(Ref.relativeError(dv.array, Ref.numericGradient(v) { loss(q, k, $0) }) < 1e-4)
    }

    /// Attention over keys split in blocks, merged, equals attention over all keys; the
    /// backward run per block with the merged lse and D sums to the full backward.
    @Test(arguments: [false, true])
    func blockwiseMergeEqualsFullAttention(causal: Bool) {
        let nq = 7, nk = 9, hq = 4, hkv = 2, d = 8
        let shape = AttentionShape(queryHeads: hq, keyValueHeads: hkv, headDim: d)
        let q = Ref.tensor(Ref.random(nq * hq * d, seed: 31), [nq, hq * d])
        let k = Ref.tensor(Ref.random(nk * hkv * d, seed: 32), [nk, hkv * d])
        let v = Ref.tensor(Ref.random(nk * hkv * d, seed: 33), [nk, hkv * d])
        let dO = Ref.tensor(Ref.random(nq * hq * d, seed: 34), [nq, hq * d])
        // Queries are the last nq positions of the nk-long sequence.
        let qOff = nk - nq
        let full = Tensor(zeros: [nq, hq * d]), fullLSE = Tensor(zeros: [nq, hq])
        BlockAttention.forward(q: q.pointer, k: k.pointer, v: v.pointer, queryCount: nq, keyCount: nk, shape: shape,
                               mask: AttentionMask(causal: causal, queryOffset: qOff), out: full.pointer, lse: fullLSE.pointer)
        let blocks = [(0, 3), (3, 4), (7, 2)]
        let merged = Tensor(zeros: [nq, hq * d]), mergedLSE = Tensor(zeros: [nq, hq])
        mergedLSE.fill(-.infinity)
        let part = Tensor(zeros: [nq, hq * d]), partLSE = Tensor(zeros: [nq, hq])
        for (start, len) in blocks {
            BlockAttention.forward(q: q.pointer, k: k.pointer + start * hkv * d, v: v.pointer + start * hkv * d,
                                   queryCount: nq, keyCount: len, shape: shape,
                                   mask: AttentionMask(causal: causal, queryOffset: qOff, keyOffset: start),
                                   out: part.pointer, lse: partLSE.pointer)
            AttentionMerge.merge(out: merged.pointer, lse: mergedLSE.pointer, otherOut: part.pointer, otherLSE: partLSE.pointer,
                                 rows: nq, heads: hq, headDim: d)
        }
        #expect(Ref.relativeError(merged.array, full.array.map(Double.init)) < 1e-5)
        #expect(Ref.relativeError(mergedLSE.array, fullLSE.array.map(Double.init)) < 1e-5)

        let rowDot = Tensor(zeros: [nq, hq])
        BlockAttention.rowDot(dOut: dO.pointer, out: full.pointer, rows: nq, shape: shape, result: rowDot.pointer)
        let dq = Tensor(zeros: [nq, hq * d]), dk = Tensor(zeros: [nk, hkv * d]), dv = Tensor(zeros: [nk, hkv * d])
        BlockAttention.backward(q: q.pointer, k: k.pointer, v: v.pointer, dOut: dO.pointer, lse: fullLSE.pointer, rowDot: rowDot.pointer,
                                queryCount: nq, keyCount: nk, shape: shape, mask: AttentionMask(causal: causal, queryOffset: qOff),
                                dq: dq.pointer, dk: dk.pointer, dv: dv.pointer)
        let bq = Tensor(zeros: [nq, hq * d]), bk = Tensor(zeros: [nk, hkv * d]), bv = Tensor(zeros: [nk, hkv * d])
        for (start, len) in blocks {
            BlockAttention.backward(q: q.pointer, k: k.pointer + start * hkv * d, v: v.pointer + start * hkv * d,
                                    dOut: dO.pointer, lse: mergedLSE.pointer, rowDot: rowDot.pointer,
                                    queryCount: nq, keyCount: len, shape: shape,
                                    mask: AttentionMask(causal: causal, queryOffset: qOff, keyOffset: start),
                                    dq: bq.pointer, dk: bk.pointer + start * hkv * d, dv: bv.pointer + start * hkv * d)
        }
        #expect(Ref.relativeError(bq.array, dq.array.map(Double.init)) < 1e-5)
        #expect(Ref.relativeError(bk.array, dk.array.map(Double.init)) < 1e-5)
        #expect(Ref.relativeError(bv.array, dv.array.map(Double.init)) < 1e-5)
    }

    @Test func mergeKeepsFullyMaskedRowsFinite() {
        let out = Tensor(shape: [2, 2], values: [0, 0, 1, 2]), lse = Tensor(shape: [2, 1], values: [-.infinity, 0.5])
        let other = Tensor(shape: [2, 2], values: [0, 0, 3, 4]), otherLSE = Tensor(shape: [2, 1], values: [-.infinity, 0.5])
        AttentionMerge.merge(out: out.pointer, lse: lse.pointer, otherOut: other.pointer, otherLSE: otherLSE.pointer,
                             rows: 2, heads: 1, headDim: 2)
        #expect(out.array == [0, 0, 2, 3])
        #expect(lse[0] == -.infinity)
        #expect(abs(lse[1] - (0.5 + logf(2))) < 1e-6)
        #expect(out.array.allSatisfy { $0.isFinite })
    }

    @Test func tilesLongerThanOneTileMatchReference() {
        // More query rows than BlockAttention.tileRows exercises the tiling and the causal skip.
        let nq = BlockAttention.tileRows + 37, hq = 2, d = 4
        let q = Ref.random(nq * hq * d, seed: 41), k = Ref.random(nq * hq * d, seed: 42), v = Ref.random(nq * hq * d, seed: 43)
        let shape = AttentionShape(queryHeads: hq, keyValueHeads: hq, headDim: d)
        let out = Tensor(zeros: [nq, hq * d]), lse = Tensor(zeros: [nq, hq])
        let qt = Ref.tensor(q, [nq, hq * d]), kt = Ref.tensor(k, [nq, hq * d]), vt = Ref.tensor(v, [nq, hq * d])
        withExtendedLifetime((qt, kt, vt)) {
            BlockAttention.forward(q: qt.pointer, k: kt.pointer, v: vt.pointer, queryCount: nq, keyCount: nq, shape: shape,
                                   mask: AttentionMask(causal: true), out: out.pointer, lse: lse.pointer)
        }
        let ref = Ref.attention(q: q, k: k, v: v, nq: nq, nk: nq, hq: hq, hkv: hq, d: d, causal: true)
        #expect(Ref.relativeError(out.array, ref.out) < 1e-5)
    }
}

/// Key ranges longer than `BlockAttention.keyBlock` are split and merged internally; check
/// forward and backward against an analytic Double reference.
@Suite struct LongKeyRangeTests {
    @Test(arguments: [false, true])
    func splitKeyRangeMatchesReference(causal: Bool) {
        let nq = 3, nk = BlockAttention.keyBlock * 2 + 77, hq = 2, hkv = 1, d = 4
        let qOff = nk - nq - 1000  // causal: queries see only part of the last key block
        let shape = AttentionShape(queryHeads: hq, keyValueHeads: hkv, headDim: d)
        let q = Ref.random(nq * hq * d, seed: 51), k = Ref.random(nk * hkv * d, seed: 52), v = Ref.random(nk * hkv * d, seed: 53)
        let dO = Ref.random(nq * hq * d, seed: 54)
        let qt = Ref.tensor(q, [nq, hq * d]), kt = Ref.tensor(k, [nk, hkv * d]), vt = Ref.tensor(v, [nk, hkv * d])
        let dOt = Ref.tensor(dO, [nq, hq * d])
        let out = Tensor(zeros: [nq, hq * d]), lse = Tensor(zeros: [nq, hq]), rowDot = Tensor(zeros: [nq, hq])
        let mask = AttentionMask(causal: causal, queryOffset: qOff)
        BlockAttention.forward(q: qt.pointer, k: kt.pointer, v: vt.pointer, queryCount: nq, keyCount: nk, shape: shape, mask: mask,
                               out: out.pointer, lse: lse.pointer)
        let ref = Ref.attention(q: q, k: k, v: v, nq: nq, nk: nk, hq: hq, hkv: hkv, d: d, causal: causal, qOff: qOff)
        #expect(Ref.relativeError(out.array, ref.out) < 1e-5)
        #expect(Ref.relativeError(lse.array, ref.lse) < 1e-5)
        BlockAttention.rowDot(dOut: dOt.pointer, out: out.pointer, rows: nq, shape: shape, result: rowDot.pointer)
        let dq = Tensor(zeros: [nq, hq * d]), dk = Tensor(zeros: [nk, hkv * d]), dv = Tensor(zeros: [nk, hkv * d])
        BlockAttention.backward(q: qt.pointer, k: kt.pointer, v: vt.pointer, dOut: dOt.pointer, lse: lse.pointer, rowDot: rowDot.pointer,
                                queryCount: nq, keyCount: nk, shape: shape, mask: mask, dq: dq.pointer, dk: dk.pointer, dv: dv.pointer)
        // Analytic Double backward: dV = P^T dO, dS = P (dO V^T - D), dQ = s dS K, dK = s dS^T Q.
        var rdq = [Double](repeating: 0, count: q.count), rdk = [Double](repeating: 0, count: k.count), rdv = rdk
        let scale = 1 / Double(d).squareRoot()
        for h in 0..<hq {
            let g = h / (hq / hkv)
            for i in 0..<nq {
                let l = ref.lse[i * hq + h]
                var dd = 0.0
                for c in 0..<d { dd += dO[(i * hq + h) * d + c] * ref.out[(i * hq + h) * d + c] }
                for j in 0..<nk where !causal || j <= qOff + i {
                    var s = 0.0, dp = 0.0
                    for c in 0..<d {
                        s += q[(i * hq + h) * d + c] * k[(j * hkv + g) * d + c]
                        dp += dO[(i * hq + h) * d + c] * v[(j * hkv + g) * d + c]
                    }
                    let p = exp(s * scale - l), ds = p * (dp - dd)
                    for c in 0..<d {
                        rdv[(j * hkv + g) * d + c] += p * dO[(i * hq + h) * d + c]
                        rdq[(i * hq + h) * d + c] += scale * ds * k[(j * hkv + g) * d + c]
                        rdk[(j * hkv + g) * d + c] += scale * ds * q[(i * hq + h) * d + c]
                    }
                }
            }
        }
        #expect(Ref.relativeError(dq.array, rdq) < 1e-4)
        #expect(Ref.relativeError(dk.array, rdk) < 1e-4)
        #expect(Ref.relativeError(dv.array, rdv) < 1e-4)
    }
}

/// Attention with bfloat16 products (the paged KV cache's in bfloat16) against the Double
/// reference on the same bfloat16-rounded queries, keys and values: what remains is the
/// probabilities' rounding (8 bits) before `p v`. Without the AVX512-BF16 kernel (a CPU without it,
/// or TORUS_BF16_KERNEL=portable) the fp32 products run.
@Suite struct BFloat16AttentionTests {
    @Test(arguments: [(4, 2, 64, 50), (4, 2, 64, 49), (2, 2, 20, 0), (8, 4, 64, -10), (2, 1, 16, BlockAttention.keyBlock + 31)])
    func matchesTheReferenceOnRoundedInputs(hq: Int, hkv: Int, d: Int, keyOffset: Int) {
        // Queries at positions 0..<nq after `prefix` keys; a negative key offset leaves the first rows no key.
        let nq = BlockAttention.tileRows + 37, prefix = max(0, keyOffset), nk = nq + prefix
        let round = { (x: [Double]) in x.map { Double(BFloat16Linear.rounded(Float($0))) } }
        let q = round(Ref.random(nq * hq * d, seed: 51)), k = round(Ref.random(nk * hkv * d, seed: 52)), v = round(Ref.random(nk * hkv * d, seed: 53))
        let shape = AttentionShape(queryHeads: hq, keyValueHeads: hkv, headDim: d)
        let mask = AttentionMask(causal: true, queryOffset: prefix, keyOffset: keyOffset < 0 ? -keyOffset : 0)
        let out = Tensor(zeros: [nq, hq * d]), lse = Tensor(zeros: [nq, hq])
        let qt = Ref.tensor(q, [nq, hq * d]), kt = Ref.tensor(k, [nk, hkv * d]), vt = Ref.tensor(v, [nk, hkv * d])
        withExtendedLifetime((qt, kt, vt)) {
            BlockAttention.forward(q: qt.pointer, k: kt.pointer, v: vt.pointer, queryCount: nq, keyCount: nk, shape: shape, mask: mask,
                                   out: out.pointer, lse: lse.pointer, products: .bfloat16)
        }
        let ref = Ref.attention(q: q, k: k, v: v, nq: nq, nk: nk, hq: hq, hkv: hkv, d: d, causal: true,
                                qOff: mask.queryOffset, kOff: mask.keyOffset)
        // Measured (Zen 5, the five cases): 3.4e-4 to 2.2e-3 (the probabilities' rounding), lse within
        // 1.1e-6; the fp32 products (TORUS_BF16_KERNEL=portable): 1.6e-7 to 4.3e-7.
        let error = Ref.relativeError(out.array, ref.out)
        #expect(error < 5e-3)
        #expect(error > 1e-5 || !BFloat16Linear.accelerated, "relative error \(error): the bfloat16 products did not run")
        var worst = 0.0
        for (a, b) in zip(lse.array, ref.lse) {
            if b == -.infinity { #expect(a == -.infinity); continue }
            worst = max(worst, abs(Double(a) - b))
        }
        #expect(worst < 1e-5, "lse differs by \(worst)")
        if keyOffset < 0 { #expect(ref.lse.contains(-.infinity) && out.array.prefix(hq * d).allSatisfy { $0 == 0 }) }
    }
}
