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
        let scratch = UnsafeMutablePointer<Float>.allocate(capacity: vocab)
        defer { scratch.deallocate() }
        for r in 0..<rows {
            let lr = logits + r * vocab
            let t = Int(targets[r])
            let m = VectorMath.max(lr, count: vocab)
            scratch.update(from: lr, count: vocab)
            let sum = VectorMath.expShifted(scratch, count: vocab, shift: m)
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
                    let factor = norm / sum
                    for j in 0..<vocab { dr[j] = scratch[j] * factor }
                    dr[t] -= norm
                }
            }
        }
        return (valid > 0 ? Float(total / Double(valid)) : 0, total, valid)
    }
}
