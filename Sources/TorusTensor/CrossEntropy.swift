import Foundation

/// Softmax cross-entropy over logits rows, averaged over the rows whose target is not
/// `ignoreIndex`.
public enum CrossEntropy {
    /// The target value that contributes neither loss nor gradient.
    public static let ignoreIndex: Int32 = -100

    /// Mean loss; when `dLogits` is given, writes `(softmax - onehot) * scale / validRows` into
    /// it (it may alias `logits`). Returns the summed loss and the number of valid rows too.
    @discardableResult
    public static func forward(logits: UnsafePointer<Float>, targets: UnsafePointer<Int32>, rows: Int, vocab: Int,
                               dLogits: UnsafeMutablePointer<Float>? = nil, scale: Float = 1) -> (mean: Float, sum: Double, valid: Int) {
        var valid = 0
        for r in 0..<rows where targets[r] != ignoreIndex { valid += 1 }
        var total: Double = 0
        let norm = valid > 0 ? scale / Float(valid) : 0
        for r in 0..<rows {
            let lr = logits + r * vocab
            let t = Int(targets[r])
            var m = -Float.infinity
            for j in 0..<vocab { m = max(m, lr[j]) }
            var sum: Float = 0
            for j in 0..<vocab { sum += expf(lr[j] - m) }
            let lse = m + logf(sum)
            if targets[r] != ignoreIndex {
                precondition(t >= 0 && t < vocab, "target \(t) outside vocabulary of \(vocab)")
                total += Double(lse - lr[t])
            }
            if let d = dLogits {
                let dr = d + r * vocab
                if targets[r] == ignoreIndex {
                    for j in 0..<vocab { dr[j] = 0 }
                } else {
                    for j in 0..<vocab { dr[j] = expf(lr[j] - lse) * norm }
                    dr[t] -= norm
                }
            }
        }
        return (valid > 0 ? Float(total / Double(valid)) : 0, total, valid)
    }
}
