import CTorusKernels
import Foundation
import Synchronization

/// The threads `Parallel.forEach` hands work to. A model step runs dozens of parallel regions
/// of tens of microseconds each (a decoding step's products); waking a sleeping thread for each
/// costs about as much as the region. These workers spin for a short while after a region
/// (`TORUS_SPIN_US`, default 100 microseconds), so the next region of the same step finds them
/// awake, and sleep when no work comes.
///
/// One caller at a time: a region started while another runs (another thread, or nested
/// inside a region) is refused and its caller runs the items itself.
final class WorkerPool: @unchecked Sendable {
    static let shared = WorkerPool()

    /// How long an idle worker spins before it sleeps.
    static let spinNanoseconds: UInt64 = {
        let microseconds = ProcessInfo.processInfo.environment["TORUS_SPIN_US"].flatMap { UInt64($0) } ?? 100
        return microseconds * 1000
    }()

    // The current region: generation (24 bits) | item count (20 bits) | next unclaimed item
    // (20 bits). Claiming an item is one atomic add, and the claim itself says which region it
    // belongs to, so a worker that wakes late can never take an item of the wrong region.
    private static let indexBits: UInt64 = 20
    private static let generationShift: UInt64 = 40
    static let maxItems = (1 << 20) - 1 - 1024

    private let ticket = Atomic<UInt64>(0)
    private let finished = Atomic<Int>(0)
    /// Workers taking part in the current region (the first `helpers` of them).
    private let helpers = Atomic<Int>(0)
    private let sleepers = Atomic<Int>(0)
    private let busy = Atomic<Bool>(false)
    private let mutex: UnsafeMutablePointer<pthread_mutex_t>
    private let wake: UnsafeMutablePointer<pthread_cond_t>
    // Written by the caller only, before it publishes a region and after the region's items are
    // all done (the ticket's release and the `finished` count's acquire order the accesses).
    private var body: ((Int) -> Void)?
    private var generation: UInt64 = 0
    private var workers = 0

    private init() {
        mutex = .allocate(capacity: 1)
        wake = .allocate(capacity: 1)
        pthread_mutex_init(mutex, nil)
        pthread_cond_init(wake, nil)
    }

    /// Runs `body(i)` for `i` in `0..<count` on the calling thread and `threads - 1` workers;
    /// false (nothing run) when another region is running or `count` is too large.
    func run(_ count: Int, threads: Int, _ body: (Int) -> Void) -> Bool {
        guard count <= Self.maxItems,
              busy.compareExchange(expected: false, desired: true, ordering: .acquiring).exchanged else { return false }
        defer { busy.store(false, ordering: .releasing) }
        let helpers = threads - 1
        while workers < helpers {
            let index = workers
            let thread = Thread { [self] in self.serve(index) }
            thread.name = "torus-worker-\(index)"
            thread.start()
            workers += 1
        }
        withoutActuallyEscaping(body) { body in
            self.body = body
            finished.store(0, ordering: .relaxed)
            self.helpers.store(helpers, ordering: .relaxed)
            generation = generation & 0xFF_FFFF == 0xFF_FFFF ? 1 : generation + 1
            ticket.store(generation << Self.generationShift | UInt64(count) << Self.indexBits, ordering: .sequentiallyConsistent)
            if sleepers.load(ordering: .sequentiallyConsistent) > 0 {
                pthread_mutex_lock(mutex)
                pthread_cond_broadcast(wake)
                pthread_mutex_unlock(mutex)
            }
            _ = claim()
            while finished.load(ordering: .acquiring) < count { torus_cpu_relax() }
            self.body = nil
        }
        return true
    }

    /// Runs items of the published region until none is left; returns that region's generation.
    private func claim() -> UInt64 {
        while true {
            let t = ticket.wrappingAdd(1, ordering: .acquiringAndReleasing).oldValue
            let mask: UInt64 = (1 << Self.indexBits) - 1
            let count = Int((t >> Self.indexBits) & mask), index = Int(t & mask)
            guard index < count else { return t >> Self.generationShift }
            do {
                // The region's closure is released before the item counts as finished: the
                // caller checks that nothing kept it once the last item is done.
                guard let body else { preconditionFailure("WorkerPool: an item was claimed with no region published") }
                body(index)
            }
            finished.wrappingAdd(1, ordering: .releasing)
        }
    }

    private func serve(_ index: Int) {
        var seen: UInt64 = 0
        while true {
            var t = ticket.load(ordering: .acquiring)
            if t >> Self.generationShift == seen {
                let start = DispatchTime.now().uptimeNanoseconds
                var spins = 0
                while t >> Self.generationShift == seen {
                    torus_cpu_relax()
                    spins += 1
                    if spins & 63 == 0 {
                        if DispatchTime.now().uptimeNanoseconds - start > Self.spinNanoseconds { sleep(until: seen) }
                        // Spinning, but runnable threads on this core (OpenBLAS's, the server's) go first.
                        else { sched_yield() }
                    }
                    t = ticket.load(ordering: .acquiring)
                }
            }
            seen = index < helpers.load(ordering: .relaxed) ? claim() : t >> Self.generationShift
        }
    }

    private func sleep(until seen: UInt64) {
        sleepers.wrappingAdd(1, ordering: .sequentiallyConsistent)
        pthread_mutex_lock(mutex)
        while ticket.load(ordering: .sequentiallyConsistent) >> Self.generationShift == seen { pthread_cond_wait(wake, mutex) }
        pthread_mutex_unlock(mutex)
        sleepers.wrappingSubtract(1, ordering: .sequentiallyConsistent)
    }
}
