import Foundation
import TorusComm
import TorusModel
import TorusTensor
import TorusTrace

/// ZeRO-1 (`train.zero: 1`): the AdamW moments and the update of a stage's parameters are
/// sharded over the ranks that share that stage. Every gradient bucket is reduce-scattered in
/// place (rank r keeps part r of each bucket, averaged, where it lies in the gradient buffer),
/// each rank clips and updates only its parts with its own moments, and the updated parts are
/// all-gathered back into every rank's full copy of the parameters. Elementwise, the update is
/// the unsharded AdamW's. Per parameter a rank holds 8 + 8 / ranks bytes of weights, gradients
/// and moments instead of 16.
public final class ShardedAdamW {
    public let comm: Communicator
    public let options: AdamWOptions
    /// Each bucket's parts in rank order: (flat offset, count).
    let parts: [[(offset: Int, count: Int)]]
    /// This rank's part of each bucket: flat offset, count and offset in the moments.
    let mine: [(offset: Int, count: Int, local: Int)]
    /// Floats of the stage this rank owns (moments).
    public let shardCount: Int
    /// The full gradient buffer (this rank's parts averaged there after `finish`).
    let gradients: ParameterStore
    /// This rank's first and second moments, packed.
    let firstMoment: Tensor, secondMoment: Tensor
    /// Updates applied so far.
    public private(set) var step = 0
    private let decayRanges: [(offset: Int, count: Int, decay: Bool)]

    /// Shards `parameters` (whose gradient buckets are `buckets`) over the ranks of `comm`.
    public init(parameters: ParameterStore, gradients: ParameterStore, buckets: [(offset: Int, count: Int)], comm: Communicator,
                options: AdamWOptions) {
        self.comm = comm
        self.gradients = gradients
        self.options = options
        let p = comm.size
        parts = buckets.map { b in
            var at = b.offset
            return (0..<p).map { r in
                let c = b.count / p + (r < b.count % p ? 1 : 0)
                defer { at += c }
                return (at, c)
            }
        }
        var local = 0
        mine = parts.map { bucket in
            let part = bucket[comm.rank]
            defer { local += part.count }
            return (part.offset, part.count, local)
        }
        shardCount = local
        firstMoment = Tensor(zeros: [max(1, local)])
        secondMoment = Tensor(zeros: [max(1, local)])
        decayRanges = AdamW.decayRanges(of: parameters)
    }

    /// Starts bucket `index`'s reduce-scatter (this rank's summed part lands at the bucket's start).
    func startReduceScatter(bucket index: Int) throws -> Request {
        let bucket = parts[index]
        return try comm.ireduceScatterInPlace(gradients.flat.pointer + bucket[0].offset, counts: bucket.map(\.count),
                                              keepAlive: gradients.flat)
    }

    /// Once every reduce-scatter completed: moves this rank's summed parts from their buckets'
    /// starts to where they belong and divides them by the number of ranks.
    func placeAndAverage() {
        let g = gradients.flat.pointer
        for (i, part) in mine.enumerated() where part.count > 0 {
            let start = parts[i][0].offset
            if start != part.offset { (g + part.offset).update(from: g + start, count: part.count) }
            VectorMath.scale(g + part.offset, count: part.count, by: 1 / Float(comm.size))
        }
    }

    /// Sum of squares of this rank's parts of the gradient.
    func sumOfSquares() -> Double {
        mine.reduce(0) { $0 + VectorMath.sumOfSquares(gradients.flat.pointer + $1.offset, count: $1.count) }
    }

    /// Scales this rank's parts of the gradient (clipping).
    func scale(by factor: Float) {
        for part in mine { VectorMath.scale(gradients.flat.pointer + part.offset, count: part.count, by: factor) }
    }

    /// One AdamW update of this rank's parts of `parameters`, then every rank's parts gathered
    /// into every rank's copy.
    public func update(parameters: ParameterStore, lr: Float) throws {
        step += 1
        let adamW = AdamWStep(options: options, step: step, lr: lr)
        let p = parameters.flat.pointer, g = gradients.flat.pointer
        Timeline.measure("AdamW (shard)") {
            for part in mine where part.count > 0 {
                for range in decayRanges {
                    let lo = max(part.offset, range.offset), hi = min(part.offset + part.count, range.offset + range.count)
                    guard lo < hi else { continue }
                    let k = part.local + lo - part.offset
                    adamW.apply(parameters: p + lo, gradients: g + lo, firstMoment: firstMoment.pointer + k,
                                secondMoment: secondMoment.pointer + k, count: hi - lo, decays: range.decay)
                }
            }
        }
        for bucket in parts { try comm.allGatherInPlace(p + bucket[0].offset, counts: bucket.map(\.count)) }
    }

    /// The full moments in an unsharded `AdamW` on rank 0 of `comm` (nil on the others, which
    /// allocate nothing; every rank calls this together): what checkpoints write.
    public func gathered(parameters: ParameterStore) throws -> AdamW? {
        let full = comm.rank == 0 ? AdamW(parameters: parameters, options: options) : nil
        for (i, bucket) in parts.enumerated() {
            let part = mine[i], counts = bucket.map(\.count)
            try comm.gather(firstMoment.pointer + part.local, into: full.map { $0.firstMoment.flat.pointer + bucket[0].offset }, counts: counts)
            try comm.gather(secondMoment.pointer + part.local, into: full.map { $0.secondMoment.flat.pointer + bucket[0].offset }, counts: counts)
        }
        full?.restore(step: step)
        return full
    }

    /// Takes this rank's parts of the moments and the step count from an unsharded `AdamW`
    /// (a loaded checkpoint).
    public func restore(from full: AdamW) {
        for part in mine {
            (firstMoment.pointer + part.local).update(from: full.firstMoment.flat.pointer + part.offset, count: part.count)
            (secondMoment.pointer + part.local).update(from: full.secondMoment.flat.pointer + part.offset, count: part.count)
        }
        step = full.step
    }
}
