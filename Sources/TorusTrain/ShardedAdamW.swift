import Foundation
import TorusComm
import TorusModel
import TorusTensor
import TorusTrace

/// ZeRO-1 (`train.zero: 1`): the AdamW moments and the update of a stage's parameters are
/// sharded over the ranks that share that stage. Every gradient bucket is reduce-scattered
/// (rank r keeps part r of each bucket, averaged), each rank clips and updates only its parts
/// with its own moments, and the updated parts are all-gathered back into every rank's full
/// copy of the parameters. Elementwise, the update is the unsharded AdamW's.
public final class ShardedAdamW {
    public let comm: Communicator
    public let options: AdamWOptions
    /// Each bucket's parts in rank order: (flat offset, count).
    let parts: [[(offset: Int, count: Int)]]
    /// This rank's part of each bucket: flat offset, count and offset in the shard.
    let mine: [(offset: Int, count: Int, local: Int)]
    /// Floats of the stage this rank owns (gradients, moments).
    public let shardCount: Int
    /// This rank's averaged gradients, first and second moments, packed.
    let gradients: Tensor, firstMoment: Tensor, secondMoment: Tensor
    /// Updates applied so far.
    public private(set) var step = 0
    private let decayRanges: [(offset: Int, count: Int, decay: Bool)]

    /// Shards `parameters` (whose gradient buckets are `buckets`) over the ranks of `comm`.
    public init(parameters: ParameterStore, buckets: [(offset: Int, count: Int)], comm: Communicator, options: AdamWOptions) {
        self.comm = comm
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
        gradients = Tensor(zeros: [max(1, local)])
        firstMoment = Tensor(zeros: [max(1, local)])
        secondMoment = Tensor(zeros: [max(1, local)])
        decayRanges = parameters.entries.map { ($0.offset, $0.count, $0.shape.count >= 2) }
    }

    /// Starts bucket `index`'s reduce-scatter from the full gradient buffer `full`.
    func startReduceScatter(bucket index: Int, from full: ParameterStore) throws -> Request {
        let bucket = parts[index], part = mine[index]
        return try comm.ireduceScatter(full.flat.pointer + bucket[0].offset, into: gradients.pointer + part.local,
                                       counts: bucket.map(\.count), keepAlive: [full.flat, gradients])
    }

    /// Divides this rank's gradients by the number of ranks (the sum becomes the average).
    func average() { VectorMath.scale(gradients.pointer, count: shardCount, by: 1 / Float(comm.size)) }

    /// Sum of squares of this rank's gradients.
    func sumOfSquares() -> Double { VectorMath.sumOfSquares(gradients.pointer, count: shardCount) }

    /// Scales this rank's gradients (clipping).
    func scale(by factor: Float) { VectorMath.scale(gradients.pointer, count: shardCount, by: factor) }

    /// One AdamW update of this rank's parts of `parameters`, then every rank's parts gathered
    /// into every rank's copy.
    public func update(parameters: ParameterStore, lr: Float) throws {
        step += 1
        let b1 = options.beta1, b2 = options.beta2, eps = options.eps
        let c1 = 1 - powf(b1, Float(step)), c2 = 1 - powf(b2, Float(step))
        let stepSize = lr / c1, c2root = c2.squareRoot()
        let p = parameters.flat.pointer
        Timeline.measure("AdamW (shard)") {
            for part in mine where part.count > 0 {
                for range in decayRanges {
                    let lo = max(part.offset, range.offset), hi = min(part.offset + part.count, range.offset + range.count)
                    guard lo < hi else { continue }
                    let k = part.local + lo - part.offset
                    VectorMath.adamW(parameters: p + lo, gradients: gradients.pointer + k, firstMoment: firstMoment.pointer + k,
                                     secondMoment: secondMoment.pointer + k, count: hi - lo, beta1: b1, beta2: b2, eps: eps,
                                     decay: range.decay ? 1 - lr * options.weightDecay : 1, stepSize: stepSize, biasCorrection2Root: c2root)
                }
            }
        }
        for bucket in parts { try comm.allGatherInPlace(p + bucket[0].offset, counts: bucket.map(\.count)) }
    }

    /// The full moments in an unsharded `AdamW` (every rank of `comm` calls this together):
    /// what checkpoints write.
    public func gathered(parameters: ParameterStore) throws -> AdamW {
        let full = AdamW(parameters: parameters, options: options)
        for (store, shard) in [(full.firstMoment, firstMoment), (full.secondMoment, secondMoment)] {
            for (i, bucket) in parts.enumerated() {
                let part = mine[i]
                (store.flat.pointer + part.offset).update(from: shard.pointer + part.local, count: part.count)
                try comm.allGatherInPlace(store.flat.pointer + bucket[0].offset, counts: bucket.map(\.count))
            }
        }
        full.restore(step: step)
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
