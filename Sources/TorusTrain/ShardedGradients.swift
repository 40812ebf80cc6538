import Foundation
import TorusModel
import TorusTensor

/// Gradients of one rank's batch computed by several threads, each on its own shard of the
/// sequences with single-threaded BLAS (this avoids BLAS's per-call thread hand-off, which
/// dominates at these matrix sizes). Shard 0 writes the rank's gradient store directly; the
/// others have their own and are added into it region by region as soon as every shard's
/// backward has finished that region, in a fixed order, so results are reproducible.
final class ShardedGradients {
    let main: ParameterStore
    private(set) var extras: [ParameterStore] = []
    private let lock = NSLock()
    private var progress: [Int] = []
    private var merged = 0
    private var onReady: ((Int) -> Void)?

    init(main: ParameterStore) { self.main = main }

    /// The store shard `i` accumulates into.
    func store(_ i: Int) -> ParameterStore { i == 0 ? main : extras[i - 1] }

    /// Prepares `shards` shards for a new step (zeroes the extra stores).
    func begin(shards: Int) {
        while extras.count < shards - 1 { extras.append(main.zerosLike()) }
        for i in 0..<(shards - 1) { extras[i].flat.fill(0) }
        progress = [Int](repeating: main.count, count: shards)
        merged = main.count
        onReady = nil
    }

    /// Before the last micro-batch: `ready(offset)` fires when all shards are summed down to `offset`.
    func watch(_ ready: @escaping (Int) -> Void) { onReady = ready }

    /// Shard `shard` has final gradients at `offset` and above.
    func report(shard: Int, offset: Int) {
        lock.lock()
        defer { lock.unlock() }
        progress[shard] = offset
        let done = progress.max() ?? offset
        // Nothing new to merge: still let the watcher poll its transfers (under the lock, so
        // one thread at a time touches them).
        guard done < merged else { onReady?(merged); return }
        for extra in extras.prefix(progress.count - 1) {
            let dst = main.flat.pointer + done, src = extra.flat.pointer + done
            for i in 0..<(merged - done) { dst[i] += src[i] }
        }
        merged = done
        onReady?(done)
    }
}
