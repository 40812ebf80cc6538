import CTorusKernels
import Foundation

/// Exact softmax attention of one block of queries against one block of keys and values.
///
/// The forward pass returns the block's output, normalised within the block, and the per-row
/// log-sum-exp of the scaled scores; partial results over several key blocks combine with
/// `AttentionMerge`. The backward pass takes the final (merged) output's `D = rowsum(dO * O)`
/// and final log-sum-exp, which makes each key block's gradient exact on its own. The single
/// rank model and the sequence-parallel methods all call these two functions.
public enum BlockAttention {
    /// Query rows per tile; bounds the score buffer to `tileRows x keyBlock` floats.
    public static let tileRows = 128
    /// Longer key ranges are processed in blocks of this many keys whose partials are merged
    /// (keeps each tile's scores in cache; the backward pass splits the same way).
    public static let keyBlock = 2048

    /// Computes `out` [queryCount, Hq*d] and `lse` [queryCount, Hq] (natural log). Rows that
    /// see no key get `out = 0` and `lse = -inf`.
    public static func forward(
        q: UnsafePointer<Float>, k: UnsafePointer<Float>, v: UnsafePointer<Float>,
        queryCount: Int, keyCount: Int, shape: AttentionShape, mask: AttentionMask,
        out: UnsafeMutablePointer<Float>, lse: UnsafeMutablePointer<Float>, products: AttentionProducts = .float32
    ) {
        if keyCount > keyBlock {
            let partOut = UnsafeMutablePointer<Float>.allocate(capacity: queryCount * shape.queryWidth)
            let partLSE = UnsafeMutablePointer<Float>.allocate(capacity: queryCount * shape.queryHeads)
            defer { partOut.deallocate(); partLSE.deallocate() }
            var j0 = 0
            while j0 < keyCount {
                let n = min(keyBlock, keyCount - j0)
                let sub = AttentionMask(causal: mask.causal, queryOffset: mask.queryOffset, keyOffset: mask.keyOffset + j0)
                let kOff = j0 * shape.keyValueWidth
                if j0 == 0 {
                    forwardBlock(q: q, k: k, v: v, queryCount: queryCount, keyCount: n, shape: shape, mask: sub, out: out, lse: lse,
                                 products: products)
                } else {
                    if sub.visibleKeys(row: queryCount - 1, keyCount: n) == 0 { break }
                    forwardBlock(q: q, k: k + kOff, v: v + kOff, queryCount: queryCount, keyCount: n, shape: shape, mask: sub,
                                 out: partOut, lse: partLSE, products: products)
                    AttentionMerge.merge(out: out, lse: lse, otherOut: partOut, otherLSE: partLSE,
                                         rows: queryCount, heads: shape.queryHeads, headDim: shape.headDim)
                }
                j0 += n
            }
            return
        }
        forwardBlock(q: q, k: k, v: v, queryCount: queryCount, keyCount: keyCount, shape: shape, mask: mask, out: out, lse: lse,
                     products: products)
    }

    /// One run of keys and values at global positions `start..<start+count`.
    public struct KeyRun {
        public var k: UnsafePointer<Float>
        public var v: UnsafePointer<Float>
        public var start: Int
        public var count: Int
        public init(k: UnsafePointer<Float>, v: UnsafePointer<Float>, start: Int, count: Int) {
            self.k = k
            self.v = v
            self.start = start
            self.count = count
        }
    }

    /// Causal attention of `queryCount` queries at positions `queryStart...` against several
    /// runs of keys, merged into `out` / `lse` (`partOut` / `partLSE`: scratch for
    /// `queryCount` rows). Runs no query can see are skipped; with none visible the rows get
    /// `out = 0`, `lse = -inf`.
    public static func forward(q: UnsafePointer<Float>, queryCount: Int, queryStart: Int, runs: [KeyRun], shape: AttentionShape,
                               out: UnsafeMutablePointer<Float>, lse: UnsafeMutablePointer<Float>,
                               partOut: UnsafeMutablePointer<Float>, partLSE: UnsafeMutablePointer<Float>,
                               products: AttentionProducts = .float32) {
        var first = true
        for r in runs where r.start <= queryStart + queryCount - 1 {
            let mask = AttentionMask(causal: true, queryOffset: queryStart, keyOffset: r.start)
            if first {
                forward(q: q, k: r.k, v: r.v, queryCount: queryCount, keyCount: r.count, shape: shape, mask: mask, out: out, lse: lse,
                        products: products)
                first = false
            } else {
                forward(q: q, k: r.k, v: r.v, queryCount: queryCount, keyCount: r.count, shape: shape, mask: mask, out: partOut, lse: partLSE,
                        products: products)
                AttentionMerge.merge(out: out, lse: lse, otherOut: partOut, otherLSE: partLSE,
                                     rows: queryCount, heads: shape.queryHeads, headDim: shape.headDim)
            }
        }
        if first {
            out.update(repeating: 0, count: queryCount * shape.queryWidth)
            lse.update(repeating: -.infinity, count: queryCount * shape.queryHeads)
        }
    }

    static func forwardBlock(
        q: UnsafePointer<Float>, k: UnsafePointer<Float>, v: UnsafePointer<Float>,
        queryCount: Int, keyCount: Int, shape: AttentionShape, mask: AttentionMask,
        out: UnsafeMutablePointer<Float>, lse: UnsafeMutablePointer<Float>, products: AttentionProducts = .float32
    ) {
        if products == .bfloat16 && BFloat16Linear.accelerated && queryCount > 1 {
            return forwardBlockBFloat16(q: q, k: k, v: v, queryCount: queryCount, keyCount: keyCount, shape: shape, mask: mask, out: out, lse: lse)
        }
        let d = shape.headDim, qw = shape.queryWidth, kw = shape.keyValueWidth
        Parallel.forEach(shape.queryHeads) { h in
            let scores = UnsafeMutablePointer<Float>.allocate(capacity: max(1, min(tileRows, queryCount) * keyCount))
            defer { scores.deallocate() }
            let g = h / shape.groupSize
            forEachTile(head: h, queryCount: queryCount, keyCount: keyCount, tile: tileRows, shape: shape, mask: mask, out: out, lse: lse) {
                i0, rows, nk, outTile in
                // One query row (decoding): matrix-vector products read K and V once, where
                // sgemm would first copy (pack) them.
                if rows == 1 {
                    BLAS.gemv(m: nk, n: d, alpha: shape.scale, a: k + g * d, lda: kw, x: q + i0 * qw + h * d, y: scores)
                } else {
                    BLAS.gemm(transB: true, m: rows, n: nk, k: d, alpha: shape.scale,
                              a: q + i0 * qw + h * d, lda: qw, b: k + g * d, ldb: kw, c: scores, ldc: nk)
                }
                softmax(scores, rows: rows, keys: nk, firstRow: i0, head: h, shape: shape, mask: mask, lse: lse)
                if rows == 1 {
                    BLAS.gemv(trans: true, m: nk, n: d, a: v + g * d, lda: kw, x: scores, y: outTile)
                } else {
                    BLAS.gemm(m: rows, n: d, k: nk, a: scores, lda: nk, b: v + g * d, ldb: kw, c: outTile, ldc: qw)
                }
            }
        }
    }

    /// Walks head `h`'s query rows in tiles of `tile`; `body(firstRow, rows, keys, outTile)` gets
    /// each tile that sees a key (`keys`: those its last row sees); a tile that sees none gets
    /// `out = 0` and `lse = -inf` here.
    private static func forEachTile(head h: Int, queryCount: Int, keyCount: Int, tile: Int, shape: AttentionShape, mask: AttentionMask,
                                    out: UnsafeMutablePointer<Float>, lse: UnsafeMutablePointer<Float>,
                                    _ body: (Int, Int, Int, UnsafeMutablePointer<Float>) -> Void) {
        let d = shape.headDim, qw = shape.queryWidth
        var i0 = 0
        while i0 < queryCount {
            let rows = min(tile, queryCount - i0)
            let nk = mask.visibleKeys(row: i0 + rows - 1, keyCount: keyCount)
            let outTile = out + i0 * qw + h * d
            if nk == 0 {
                for r in 0..<rows {
                    (outTile + r * qw).update(repeating: 0, count: d)
                    lse[(i0 + r) * shape.queryHeads + h] = -Float.infinity
                }
            } else {
                body(i0, rows, nk, outTile)
            }
            i0 += rows
        }
    }

    /// Softmax of a tile's scores times `scale` in place ([rows, keys], row r the query at
    /// `firstRow + r`), each row over the keys it sees (the rest set to 0), and its log-sum-exp
    /// into `lse` (the scale folded into the exponentials: no pass of its own).
    private static func softmax(_ scores: UnsafeMutablePointer<Float>, rows: Int, keys nk: Int, firstRow i0: Int, head h: Int,
                                shape: AttentionShape, mask: AttentionMask, lse: UnsafeMutablePointer<Float>, scale: Float = 1) {
        for r in 0..<rows {
            let s = scores + r * nk
            let visible = mask.visibleKeys(row: i0 + r, keyCount: nk)
            if visible == 0 {
                s.update(repeating: 0, count: nk)
                lse[(i0 + r) * shape.queryHeads + h] = -Float.infinity
                continue
            }
            let m = VectorMath.max(s, count: visible)
            let sum = VectorMath.expShifted(s, count: visible, shift: m, scale: scale)
            VectorMath.scale(s, count: visible, by: 1 / sum)
            if visible < nk { (s + visible).update(repeating: 0, count: nk - visible) }
            lse[(i0 + r) * shape.queryHeads + h] = m * scale + logf(sum)
        }
    }

    /// `forwardBlock` with bfloat16 products (fp32 sums): each key/value head's keys and values
    /// packed once for the bfloat16 kernel (split over the key/value heads) and shared by its
    /// query heads (split over the query heads); queries and probabilities rounded per tile. Each
    /// tile computes only the keys its last row sees.
    static func forwardBlockBFloat16(
        q: UnsafePointer<Float>, k: UnsafePointer<Float>, v: UnsafePointer<Float>,
        queryCount: Int, keyCount: Int, shape: AttentionShape, mask: AttentionMask,
        out: UnsafeMutablePointer<Float>, lse: UnsafeMutablePointer<Float>
    ) {
        let d = shape.headDim, qw = shape.queryWidth, kw = shape.keyValueWidth
        let visible = mask.visibleKeys(row: queryCount - 1, keyCount: keyCount)
        let tile = min(tileRows, queryCount), headPairs = (d + 1) / 2, keyPairs = (visible + 1) / 2
        // Keys as the weights of scores = q K^T ([visible, d]); values transposed as those of o = p V ([d, visible]).
        let keysCount = max(1, torus_bf16_packed_count(visible, d)), valuesCount = max(1, torus_bf16_packed_count(d, visible))
        let keys = UnsafeMutablePointer<UInt16>.allocate(capacity: shape.keyValueHeads * keysCount)
        let values = UnsafeMutablePointer<UInt16>.allocate(capacity: shape.keyValueHeads * valuesCount)
        defer { keys.deallocate(); values.deallocate() }
        if visible > 0 {
            Parallel.forEach(shape.keyValueHeads) { g in
                torus_bf16_pack_strided(k + g * d, kw, 1, visible, d, keys + g * keysCount)
                torus_bf16_pack_strided(v + g * d, 1, kw, d, visible, values + g * valuesCount)
            }
        }
        Parallel.forEach(shape.queryHeads) { h in
            let g = h / shape.groupSize
            let queries = UnsafeMutablePointer<UInt16>.allocate(capacity: tile * 2 * headPairs)
            let probabilities = UnsafeMutablePointer<UInt16>.allocate(capacity: max(1, tile * 2 * keyPairs))
            let scores = UnsafeMutablePointer<Float>.allocate(capacity: max(1, tile * visible))
            defer { queries.deallocate(); probabilities.deallocate(); scores.deallocate() }
            forEachTile(head: h, queryCount: queryCount, keyCount: keyCount, tile: tile, shape: shape, mask: mask, out: out, lse: lse) {
                i0, rows, nk, outTile in
                torus_bf16_rows_strided(q + i0 * qw + h * d, qw, queries, rows, d)
                torus_linear_bf16_strided(queries, headPairs, keys + g * keysCount, headPairs, scores, nk, rows, d, nk, 0, (nk + 15) / 16, 0)
                softmax(scores, rows: rows, keys: nk, firstRow: i0, head: h, shape: shape, mask: mask, lse: lse, scale: shape.scale)
                torus_bf16_rows(scores, probabilities, rows, nk)
                torus_linear_bf16_strided(probabilities, (nk + 1) / 2, values + g * valuesCount, keyPairs, outTile, qw, rows, nk, d, 0,
                                          (d + 15) / 16, 0)
            }
        }
    }

    /// `D[row, head] = sum over d of dO * O`, the per-row term of the softmax backward.
    public static func rowDot(dOut: UnsafePointer<Float>, out: UnsafePointer<Float>, rows: Int, shape: AttentionShape,
                              result: UnsafeMutablePointer<Float>) {
        let d = shape.headDim
        for r in 0..<rows {
            for h in 0..<shape.queryHeads {
                let base = (r * shape.queryHeads + h) * d
                var acc: Float = 0
                for c in 0..<d { acc += dOut[base + c] * out[base + c] }
                result[r * shape.queryHeads + h] = acc
            }
        }
    }

    /// Adds this block's contribution to `dq` [queryCount, Hq*d], `dk` and `dv`
    /// [keyCount, Hkv*d], given the final output's `lse` and `D` (`rowDot`).
    public static func backward(
        q: UnsafePointer<Float>, k: UnsafePointer<Float>, v: UnsafePointer<Float>,
        dOut: UnsafePointer<Float>, lse: UnsafePointer<Float>, rowDot: UnsafePointer<Float>,
        queryCount: Int, keyCount: Int, shape: AttentionShape, mask: AttentionMask,
        dq: UnsafeMutablePointer<Float>, dk: UnsafeMutablePointer<Float>, dv: UnsafeMutablePointer<Float>
    ) {
        var j0 = 0
        repeat {
            let n = min(keyBlock, keyCount - j0)
            let sub = AttentionMask(causal: mask.causal, queryOffset: mask.queryOffset, keyOffset: mask.keyOffset + j0)
            if j0 > 0 && sub.visibleKeys(row: queryCount - 1, keyCount: n) == 0 { break }
            let kOff = j0 * shape.keyValueWidth
            backwardBlock(q: q, k: k + kOff, v: v + kOff, dOut: dOut, lse: lse, rowDot: rowDot, queryCount: queryCount,
                          keyCount: n, shape: shape, mask: sub, dq: dq, dk: dk + kOff, dv: dv + kOff)
            j0 += n
        } while j0 < keyCount
    }

    static func backwardBlock(
        q: UnsafePointer<Float>, k: UnsafePointer<Float>, v: UnsafePointer<Float>,
        dOut: UnsafePointer<Float>, lse: UnsafePointer<Float>, rowDot: UnsafePointer<Float>,
        queryCount: Int, keyCount: Int, shape: AttentionShape, mask: AttentionMask,
        dq: UnsafeMutablePointer<Float>, dk: UnsafeMutablePointer<Float>, dv: UnsafeMutablePointer<Float>
    ) {
        let d = shape.headDim, qw = shape.queryWidth, kw = shape.keyValueWidth
        let cap = max(1, min(tileRows, queryCount) * keyCount)
        // Query heads of one group accumulate into the same dK, dV columns: one worker per group.
        Parallel.forEach(shape.keyValueHeads) { g in
          let p = UnsafeMutablePointer<Float>.allocate(capacity: cap)
          let dp = UnsafeMutablePointer<Float>.allocate(capacity: cap)
          defer { p.deallocate(); dp.deallocate() }
          for h in (g * shape.groupSize)..<((g + 1) * shape.groupSize) {
            var i0 = 0
            while i0 < queryCount {
                let rows = min(tileRows, queryCount - i0)
                let nk = mask.visibleKeys(row: i0 + rows - 1, keyCount: keyCount)
                if nk == 0 { i0 += rows; continue }
                let qTile = q + i0 * qw + h * d, dOTile = dOut + i0 * qw + h * d
                BLAS.gemm(transB: true, m: rows, n: nk, k: d, alpha: shape.scale,
                          a: qTile, lda: qw, b: k + g * d, ldb: kw, c: p, ldc: nk)
                BLAS.gemm(transB: true, m: rows, n: nk, k: d, a: dOTile, lda: qw, b: v + g * d, ldb: kw, c: dp, ldc: nk)
                for r in 0..<rows {
                    let pr = p + r * nk, dpr = dp + r * nk
                    let l = lse[(i0 + r) * shape.queryHeads + h]
                    let visible = l == -Float.infinity ? 0 : mask.visibleKeys(row: i0 + r, keyCount: nk)
                    let dd = rowDot[(i0 + r) * shape.queryHeads + h]
                    VectorMath.expShifted(pr, count: visible, shift: l)
                    for j in 0..<visible { dpr[j] = pr[j] * (dpr[j] - dd) }
                    for j in visible..<nk { pr[j] = 0; dpr[j] = 0 }
                }
                // dV += P^T dO ; dQ += scale * dS K ; dK += scale * dS^T Q
                BLAS.gemm(transA: true, m: nk, n: d, k: rows, a: p, lda: nk, b: dOTile, ldb: qw,
                          beta: 1, c: dv + g * d, ldc: kw)
                BLAS.gemm(m: rows, n: d, k: nk, alpha: shape.scale, a: dp, lda: nk, b: k + g * d, ldb: kw,
                          beta: 1, c: dq + i0 * qw + h * d, ldc: qw)
                BLAS.gemm(transA: true, m: nk, n: d, k: rows, alpha: shape.scale, a: dp, lda: nk, b: qTile, ldb: qw,
                          beta: 1, c: dk + g * d, ldc: kw)
                i0 += rows
            }
          }
        }
    }
}

/// The arithmetic of attention's two products (scores `q k^T` and outputs `p v`).
public enum AttentionProducts: Sendable {
    /// fp32 throughout (training's arithmetic).
    case float32
    /// Queries, keys, values and probabilities rounded to bfloat16, products summed in fp32, as
    /// vLLM's CPU attention computes in a bfloat16 model; for keys and values a cache already
    /// holds in bfloat16 (their rounding then changes nothing).
    case bfloat16
}
