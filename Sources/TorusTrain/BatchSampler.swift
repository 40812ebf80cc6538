import TorusTensor

/// Deterministic windows of a token stream for training: step s, micro-batch a, sequence j of
/// the global batch reads the window at a position chosen by a seeded permutation, so the
/// data at any step depends only on (seed, step) and resume needs no extra state. Rank r of
/// a data-parallel group takes sequences [r * perRank, (r + 1) * perRank) of each micro-batch.
public struct BatchSampler: Sendable {
    public let tokenCount: Int
    public let seqLen: Int
    public let seed: UInt64
    /// Windows of seqLen + 1 tokens that fit in the stream.
    public var windowCount: Int { (tokenCount - 1) / seqLen }

    public init(tokenCount: Int, seqLen: Int, seed: UInt64) {
        self.tokenCount = tokenCount
        self.seqLen = seqLen
        self.seed = seed
    }

    /// Start offset of global sequence `index` (counting across all steps).
    public func windowStart(globalIndex index: Int) -> Int {
        let n = windowCount
        let epoch = index / n, within = index % n
        // A bijection of 0..<n per epoch: an affine map with a multiplier coprime to n.
        var g = SeededGenerator(seed: seed &+ UInt64(epoch) &* 0x9E37_79B9)
        var a = Int(g.next() % UInt64(max(n, 1))) | 1
        while gcd(a, n) != 1 { a += 2 }
        let b = Int(g.next() % UInt64(max(n, 1)))
        return ((a * within + b) % n) * seqLen
    }

    /// Inputs and targets of this rank's share of one micro-batch. Where `targetMask` (one flag
    /// per token of the stream) is false the target is `CrossEntropy.ignoreIndex`: no loss.
    public func batch(step: Int, micro: Int, microBatches: Int, globalSequences: Int, rank: Int, ranks: Int,
                      tokens: [Int32], targetMask: [Bool]? = nil) -> (inputs: [Int32], targets: [Int32]) {
        let perRank = globalSequences / ranks
        var inputs: [Int32] = [], targets: [Int32] = []
        inputs.reserveCapacity(perRank * seqLen)
        targets.reserveCapacity(perRank * seqLen)
        for j in 0..<perRank {
            let global = ((step - 1) * microBatches + micro) * globalSequences + rank * perRank + j
            let start = windowStart(globalIndex: global)
            inputs += tokens[start..<(start + seqLen)]
            if let targetMask {
                targets += ((start + 1)...(start + seqLen)).map { targetMask[$0] ? tokens[$0] : CrossEntropy.ignoreIndex }
            } else {
                targets += tokens[(start + 1)...(start + seqLen)]
            }
        }
        return (inputs, targets)
    }

    private func gcd(_ a: Int, _ b: Int) -> Int { b == 0 ? a : gcd(b, a % b) }
}
