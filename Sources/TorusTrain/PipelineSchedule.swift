import TorusComm

/// One forward or backward pass a pipeline stage runs: micro-batch `micro` through its
/// virtual stage `chunk` (0 without interleaving).
public struct PipelineOp: Equatable, Sendable, CustomStringConvertible {
    public var forward: Bool
    public var micro: Int
    public var chunk: Int

    public init(forward: Bool, micro: Int, chunk: Int = 0) {
        self.forward = forward; self.micro = micro; self.chunk = chunk
    }

    public var description: String { "\(forward ? "F" : "B")\(micro)" + (chunk > 0 ? "c\(chunk)" : "") }
}

/// The order in which one pipeline stage runs its passes in a step.
///
/// - gpipe: every forward, then the backwards in reverse.
/// - 1f1b: `stages - stage - 1` warm-up forwards, then one forward and one backward
///   alternately, then the remaining backwards (activations of at most `stages - stage`
///   micro-batches held at once).
/// - interleaved (Megatron-LM's interleaved 1F1B): each stage runs `virtualStages` pieces of
///   the model (stage s holds pieces s, s + p, s + 2p, ...); micro-batches go through the pieces
///   in groups of `stages`, with a longer warm-up, which divides the bubble by `virtualStages`.
///   Needs `microBatches` to be a multiple of `stages`.
public enum PipelineSchedule {
    public static let names = ["gpipe", "1f1b", "interleaved"]

    public static func order(schedule: String, stages p: Int, stage s: Int, microBatches m: Int,
                             virtualStages v: Int = 1) -> [PipelineOp] {
        switch schedule {
        case "1f1b":
            return oneFOneB(total: m, warmup: min(p - s - 1, m), op: { PipelineOp(forward: $1, micro: $0) })
        case "interleaved":
            // Pass k of a direction: micro-batch group k / (p v), piece (k mod p v) / p (reversed
            // for backward), micro-batch k mod p within the group.
            let total = m * v
            let warmup = m == p ? total : min(total, (p - s - 1) * 2 + (v - 1) * p)
            return oneFOneB(total: total, warmup: warmup) { k, forward in
                let piece = (k % (p * v)) / p
                return PipelineOp(forward: forward, micro: (k / (p * v)) * p + k % p, chunk: forward ? piece : v - 1 - piece)
            }
        default:
            return (0..<m).map { PipelineOp(forward: true, micro: $0) } + (0..<m).reversed().map { PipelineOp(forward: false, micro: $0) }
        }
    }

    /// `warmup` forwards, then forward and backward alternately, then the remaining backwards;
    /// `op(k, forward)` names the k-th pass of each direction.
    static func oneFOneB(total: Int, warmup: Int, op: (Int, Bool) -> PipelineOp) -> [PipelineOp] {
        var order = (0..<warmup).map { op($0, true) }
        for i in 0..<(total - warmup) {
            order.append(op(warmup + i, true))
            order.append(op(i, false))
        }
        for i in (total - warmup)..<total { order.append(op(i, false)) }
        return order
    }
}

extension PipelineSchedule {
    /// The tag of the activation (`forward`) or activation gradient sent to virtual stage
    /// `receiver` for micro-batch `micro` of `microBatches`.
    public static func tag(receiver: Int, micro: Int, microBatches m: Int, forward: Bool) -> Int {
        MessageTag.of(forward ? .pipelineActivations : .pipelineGradients, receiver * m + micro)
    }

    /// Throws unless every tag of a step of `stages` x `virtualStages` pieces and `microBatches`
    /// is within `upperBound`.
    public static func checkTags(stages: Int, virtualStages: Int, microBatches: Int, upperBound: Int) throws {
        let what = "the pipeline (\(stages) stages x \(virtualStages) pieces x \(microBatches) micro-batches)"
        for kind in [MessageKind.pipelineActivations, .pipelineGradients] {
            try MessageTag.check(kind, count: stages * virtualStages * microBatches, upperBound: upperBound, what: what)
        }
    }
}
