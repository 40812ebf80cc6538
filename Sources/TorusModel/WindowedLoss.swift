/// Mean next-token loss of a model over a token stream, the stream cut into consecutive
/// windows of `seqLen` inputs predicting the following tokens (the last may be shorter).
public struct WindowedLoss: Sendable {
    public var meanLoss: Double
    public var tokens: Int
    public var windows: Int
}

extension LlamaModel {
    /// Evaluates windows `batch` at a time; `progress(done, total, runningLoss)` is called after
    /// each batch.
    public func windowedLoss(tokens: [Int32], seqLen: Int, batch: Int = 1,
                             progress: ((Int, Int, Double) -> Void)? = nil) throws -> WindowedLoss {
        guard tokens.count >= 2, seqLen >= 1, batch >= 1 else {
            throw ModelInputError.shapeMismatch("need at least 2 tokens, seq_len >= 1 and batch >= 1")
        }
        var windows: [Range<Int>] = []
        var start = 0
        while start + 1 < tokens.count {
            let end = min(start + seqLen, tokens.count - 1)
            windows.append(start..<end)
            start = end
        }
        var total = 0.0, count = 0, i = 0
        while i < windows.count {
            // Batch only windows of equal length (all but possibly the last).
            let len = windows[i].count
            var inputs: [Int32] = [], targets: [Int32] = [], n = 0
            while i < windows.count && n < batch && windows[i].count == len {
                inputs += tokens[windows[i]]
                targets += tokens[(windows[i].lowerBound + 1)...windows[i].upperBound]
                n += 1; i += 1
            }
            let loss = try self.loss(tokens: inputs, targets: targets, batch: n, seqLen: len)
            total += Double(loss) * Double(len * n)
            count += len * n
            progress?(i, windows.count, total / Double(count))
        }
        return WindowedLoss(meanLoss: total / Double(count), tokens: count, windows: windows.count)
    }
}
