import Foundation
import Testing

/// The communicator under real Open MPI: `torus check comm` runs every collective, the
/// nonblocking ring exchange, sub-communicators and error reporting on each rank and exits
/// non-zero on any wrong value.
@Suite(.serialized) struct MPICommunicatorTests {
    @Test(arguments: [1, 2, 3, 4])
    func collectivesAndRingExchange(ranks: Int) throws {
        let r = try TorusBinary.mpirun(ranks: ranks, ["check", "comm", "--count", "4099", "--verbose"], timeout: 90)
        #expect(!r.timedOut, "mpirun -np \(ranks) timed out:\n\(r.output)")
        #expect(r.status == 0, "mpirun -np \(ranks) failed:\n\(r.output)")
        #expect(r.stdout.contains("comm check passed on \(ranks) ranks"))
        for rank in 0..<ranks {
            #expect(r.stdout.contains("rank \(rank): ok nonblocking double-buffered ring exchange"), "rank \(rank) missing")
        }
    }

    @Test func runsAsOneProcessWithoutMPIRun() throws {
        let r = try TorusBinary.torus(["check", "comm"], timeout: 60)
        #expect(r.status == 0, "\(r.output)")
        #expect(r.stdout.contains("comm check passed on 1 ranks"))
    }
}
