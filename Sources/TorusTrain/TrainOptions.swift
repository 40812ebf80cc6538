/// Sequence parallelism inside each data-parallel replica: `size` consecutive ranks split
/// every sequence (`layout`) and compute attention together (`method`: ring or tokenring).
public struct SequenceParallelOptions: Codable, Equatable, Sendable {
    public var size: Int
    public var method: String
    public var layout: String

    public init(size: Int, method: String = "ring", layout: String = "zigzag") {
        self.size = size; self.method = method; self.layout = layout
    }
}

/// Everything that defines a training run besides the model and the data.
public struct TrainOptions: Codable, Equatable, Sendable {
    /// Optimizer steps to reach.
    public var steps: Int
    /// Sequences in one micro-batch summed over all data-parallel ranks.
    public var globalSequences: Int
    /// Micro-batches accumulated per optimizer step.
    public var microBatches: Int = 1
    public var seqLen: Int
    public var schedule: LearningRateSchedule
    public var adamw: AdamWOptions = AdamWOptions()
    /// Clip the global gradient norm to this (0 turns clipping off).
    public var clipNorm: Double = 1.0
    public var seed: UInt64 = 0
    /// Compare weights across ranks every this many steps.
    public var checkWeightsEvery: Int = 50
    public var bucketBytes: Int = 32 << 20
    /// Sequence parallelism (nil: every rank holds whole sequences).
    public var sequenceParallel: SequenceParallelOptions?
    /// Pipeline stages (nil or 1: none); they run `pipelineSchedule` over `microBatches`.
    public var pipelineStages: Int?
    /// "gpipe" (default), "1f1b" or "interleaved" (see `PipelineSchedule`).
    public var pipelineSchedule: String?
    /// Virtual stages per pipeline stage for the interleaved schedule (nil: 1).
    public var pipelineVirtualStages: Int?
    /// When set and positive, a background thread drives MPI progress every this many
    /// microseconds during each step (transfers then move while compute runs, at the cost of
    /// some CPU); otherwise transfers move at the polls between layers and attention blocks.
    public var progressMicroseconds: Int?
    /// ZeRO stage: 1 shards the AdamW moments and the update over the ranks of each stage
    /// (`ShardedAdamW`); nil or 0: every rank holds all of it.
    public var zero: Int?

    public init(steps: Int, globalSequences: Int, microBatches: Int = 1, seqLen: Int, schedule: LearningRateSchedule,
                adamw: AdamWOptions = AdamWOptions(), clipNorm: Double = 1.0, seed: UInt64 = 0,
                checkWeightsEvery: Int = 50, bucketBytes: Int = 32 << 20) {
        self.steps = steps; self.globalSequences = globalSequences; self.microBatches = microBatches
        self.seqLen = seqLen; self.schedule = schedule; self.adamw = adamw; self.clipNorm = clipNorm
        self.seed = seed
        self.checkWeightsEvery = checkWeightsEvery; self.bucketBytes = bucketBytes
    }
}

/// A training problem that stops the run, with what to do about it.
public enum TrainError: Error, CustomStringConvertible {
    case invalid(String)
    case nonFiniteLoss(step: Int, loss: Float, lastCheckpoint: String?)
    case weightsDiverged(step: Int, detail: String)
    case resume(String)
    case checkpoint(String)

    public var description: String {
        switch self {
        case let .invalid(m): return "train: \(m)"
        case let .nonFiniteLoss(step, loss, last):
            return "train: loss is \(loss) at step \(step); stopping. Last good checkpoint: \(last ?? "none")"
        case let .weightsDiverged(step, detail): return "train: weights differ across ranks at step \(step): \(detail)"
        case let .resume(m): return "train: cannot resume: \(m)"
        case let .checkpoint(m): return "train: checkpoint: \(m)"
        }
    }
}
