import Foundation
import TorusComm
import TorusModel
import TorusTensor

/// Averages gradients across data-parallel ranks in buckets that start while backward is
/// still running.
///
/// Buckets are contiguous slices of the flat gradient buffer (whole tensors, about
/// `bucketBytes` each), formed from the end of the layout because backward finishes the head
/// first and the embedding last. `ready(offset:)` starts a nonblocking all-reduce for every
/// bucket lying wholly at or above `offset` and polls the ones in flight, which is what moves
/// their data (Open MPI progresses nonblocking collectives only inside MPI calls).
public final class GradientReducer {
    public let comm: Communicator
    public let gradients: ParameterStore
    /// (offset, count) of each bucket, highest offset first.
    public let buckets: [(offset: Int, count: Int)]
    /// With ZeRO-1: buckets are reduce-scattered into this optimizer's shard instead of all-reduced.
    public var sharded: ShardedAdamW?
    private var requests: [Request] = []
    private var launched = 0
    private var firstError: Error?

    /// Seconds spent blocked in the final wait of the last step (exposed communication plus
    /// any time spent waiting for slower ranks to finish their backward).
    public private(set) var lastWaitSeconds: Double = 0
    /// Monotonic clock (ns) when the last step's final wait began and ended.
    public private(set) var lastWaitInterval: (start: UInt64, end: UInt64) = (0, 0)

    /// Averages over the ranks of `comm` (with pipeline stages: the ranks of one stage).
    public init(comm: Communicator, gradients: ParameterStore, bucketBytes: Int) {
        self.comm = comm
        self.gradients = gradients
        var buckets: [(Int, Int)] = []
        var end = gradients.count, start = gradients.count
        for e in gradients.entries.reversed() {
            start = e.offset
            if (end - start) * 4 >= bucketBytes {
                buckets.append((start, end - start))
                end = start
            }
        }
        if end > 0 { buckets.append((0, end)) }
        self.buckets = buckets
    }

    /// Forgets the previous step's requests.
    public func begin() {
        requests.removeAll()
        launched = 0
        firstError = nil
    }

    /// Gradients at `offset` and above are final: start their buckets, poll those in flight.
    public func ready(offset: Int) {
        guard comm.size > 1, firstError == nil else { return }
        do {
            while launched < buckets.count && buckets[launched].offset >= offset {
                let b = buckets[launched]
                if let sharded {
                    requests.append(try sharded.startReduceScatter(bucket: launched))
                } else {
                    requests.append(try comm.iallReduce(gradients.flat.pointer + b.offset, count: b.count, keepAlive: gradients.flat))
                }
                launched += 1
            }
            for r in requests where !r.isComplete { _ = try r.test() }
        } catch {
            firstError = error
        }
    }

    /// Launches anything left, waits for all buckets and divides by the number of ranks.
    public func finish() throws {
        guard comm.size > 1 else { lastWaitSeconds = 0; return }
        ready(offset: 0)
        if let firstError { throw firstError }
        let t0 = DispatchTime.now().uptimeNanoseconds
        try Request.waitAll(requests)
        let t1 = DispatchTime.now().uptimeNanoseconds
        lastWaitSeconds = Double(t1 - t0) / 1e9
        lastWaitInterval = (t0, t1)
        if let sharded { sharded.placeAndAverage() } else { VectorMath.scale(gradients.flat.pointer, count: gradients.count, by: 1 / Float(comm.size)) }
    }

    /// Time of one blocking all-reduce of the whole gradient buffer in the same buckets (the
    /// communication cost that overlap hides); leaves the buffer summed, so call on scratch.
    public func measureBlockingReduce(on scratch: ParameterStore) throws -> Double {
        guard comm.size > 1 else { return 0 }
        try comm.barrier()
        let t0 = DispatchTime.now().uptimeNanoseconds
        for b in buckets { try comm.allReduce(scratch.flat.pointer + b.offset, count: b.count) }
        return Double(DispatchTime.now().uptimeNanoseconds - t0) / 1e9
    }
}
