import Foundation

/// Combines attention partials computed over disjoint key blocks (DESIGN.md, "Attention
/// partials and the merge"). The one implementation every attention path uses.
public enum AttentionMerge {
    /// Merges partial (`otherOut`, `otherLSE`) into (`out`, `lse`) in place, for `rows` rows of
    /// `heads` heads of `headDim`. Rows where both sides saw no key stay `0` / `-inf`.
    public static func merge(out: UnsafeMutablePointer<Float>, lse: UnsafeMutablePointer<Float>,
                             otherOut: UnsafePointer<Float>, otherLSE: UnsafePointer<Float>,
                             rows: Int, heads: Int, headDim: Int) {
        for r in 0..<rows {
            for h in 0..<heads {
                let li = r * heads + h
                let a = lse[li], b = otherLSE[li]
                if b == -Float.infinity { continue }
                let o = out + li * headDim, ob = otherOut + li * headDim
                if a == -Float.infinity {
                    for c in 0..<headDim { o[c] = ob[c] }
                    lse[li] = b
                    continue
                }
                let m = max(a, b)
                let merged = m + log1pf(expf(-abs(a - b)))
                let wa = expf(a - merged), wb = expf(b - merged)
                for c in 0..<headDim { o[c] = o[c] * wa + ob[c] * wb }
                lse[li] = merged
            }
        }
    }

    /// Floats of one packed partial: `rows` outputs of `heads * headDim` then `rows * heads`
    /// log-sum-exps (what ranks exchange to combine their partials).
    public static func packedCount(rows: Int, heads: Int, headDim: Int) -> Int { rows * heads * (headDim + 1) }

    /// Packs (`out`, `lse`) of `rows` rows into `packed` (`packedCount` floats).
    public static func pack(out: UnsafePointer<Float>, lse: UnsafePointer<Float>, rows: Int, heads: Int, headDim: Int,
                            into packed: UnsafeMutablePointer<Float>) {
        packed.update(from: out, count: rows * heads * headDim)
        (packed + rows * heads * headDim).update(from: lse, count: rows * heads)
    }

    /// `out` and `lse` become the merge of `parts` packed partials laid end to end, in order
    /// (every rank that merges the same parts gets the same bits).
    public static func mergePacked(_ packed: UnsafePointer<Float>, parts: Int, out: UnsafeMutablePointer<Float>,
                                   lse: UnsafeMutablePointer<Float>, rows: Int, heads: Int, headDim: Int) {
        let width = rows * heads * headDim, per = packedCount(rows: rows, heads: heads, headDim: headDim)
        out.update(repeating: 0, count: width)
        lse.update(repeating: -.infinity, count: rows * heads)
        for p in 0..<parts {
            merge(out: out, lse: lse, otherOut: packed + p * per, otherLSE: packed + p * per + width, rows: rows, heads: heads, headDim: headDim)
        }
    }
}
