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
}
