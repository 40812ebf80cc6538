import Foundation
import Synchronization
import Testing
@testable import TorusTensor

/// Counts how often each item of a region ran.
private final class Tally: @unchecked Sendable {
    let counts: UnsafeMutablePointer<Atomic<Int>>
    let size: Int
    init(_ size: Int) {
        self.size = size
        counts = .allocate(capacity: size)
        for i in 0..<size { (counts + i).initialize(to: Atomic(0)) }
    }
    deinit { counts.deinitialize(count: size); counts.deallocate() }
    func hit(_ i: Int) { counts[i].wrappingAdd(1, ordering: .relaxed) }
    func all(equal n: Int, upTo count: Int) -> Bool { (0..<count).allSatisfy { counts[$0].load(ordering: .relaxed) == n } }
}

@Suite struct WorkerPoolTests {
    @Test("every item of every region runs once, across region sizes, thread counts and sleeping workers")
    func everyItemOnce() {
        for threads in [2, 3] {
            for count in [1, 2, 3, 7, 64, 300] {
                for round in 0..<20 {
                    // Every fifth region after a pause longer than the spin: the workers sleep and must be woken.
                    if round % 5 == 4 { usleep(UInt32(WorkerPool.spinNanoseconds / 1000) + 2000) }
                    let tally = Tally(count)
                    let ran = WorkerPool.shared.run(count, threads: threads) { i in tally.hit(i) }
                    // Another test's region may hold the pool; then this caller runs the items.
                    if !ran { for i in 0..<count { tally.hit(i) } }
                    #expect(tally.all(equal: 1, upTo: count), "an item of a \(count)-item region on \(threads) threads ran a wrong number of times")
                }
            }
        }
    }

    @Test("a region started inside a region, or beside one on another thread, is refused and runs on its caller")
    func concurrentAndNested() async {
        // Nested: the inner region is refused.
        let nestedRefused = Atomic<Int>(0)
        let outer = WorkerPool.shared.run(4, threads: 2) { _ in
            if !WorkerPool.shared.run(2, threads: 2, { _ in }) { nestedRefused.wrappingAdd(1, ordering: .relaxed) }
        }
        // (Another test's region may hold the pool, so that the outer region is refused too.)
        #expect(!outer || nestedRefused.load(ordering: .relaxed) == 4)

        // Several threads at once through Parallel.forEach's fallback: nothing lost, nothing twice.
        let callers = 4, count = 50, rounds = 200
        let tallies = (0..<callers).map { _ in Tally(count) }
        await withTaskGroup(of: Void.self) { group in
            for c in 0..<callers {
                let tally = tallies[c]
                group.addTask {
                    for _ in 0..<rounds {
                        if !WorkerPool.shared.run(count, threads: 2, { tally.hit($0) }) {
                            for i in 0..<count { tally.hit(i) }
                        }
                    }
                }
            }
        }
        for tally in tallies { #expect(tally.all(equal: rounds, upTo: count)) }
    }

    @Test("Parallel.forEach writes each output once")
    func parallelForEach() {
        var out = [Int](repeating: 0, count: 1000)
        out.withUnsafeMutableBufferPointer { buffer in
            guard let p = buffer.baseAddress else { return }
            Parallel.forEach(1000) { i in p[i] += i * i }
        }
        #expect(out == (0..<1000).map { $0 * $0 })
    }
}
