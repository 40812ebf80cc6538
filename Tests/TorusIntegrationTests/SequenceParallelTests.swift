import Foundation
import Testing

/// Ring Attention and TokenRing under real Open MPI against the single-rank computation on the same inputs:
/// out, lse, dQ, dK, dV on every rank, zigzag and contiguous, causal and not, GQA and not.
@Suite(.serialized) struct SequenceParallelTests {
    @Test(arguments: ["ring", "tokenring"], [1, 2, 3, 4])
    func methodMatchesOneRank(method: String, ranks: Int) throws {
        let r = try TorusBinary.mpirun(ranks: ranks, ["check", "attention", "--method", method, "--chunk", "5"], timeout: 120)
        #expect(!r.timedOut, "\(method) attention on \(ranks) ranks timed out:\n\(r.output)")
        #expect(r.status == 0, "\(r.output)")
        #expect(r.stdout.contains("attention check passed: \(method) on \(ranks) ranks"), "\(r.output)")
        // 2 layouts x causal/full x 3 head layouts, each reported.
        #expect(r.stdout.components(separatedBy: "\n").filter { $0.hasPrefix("ok ") }.count == 12, "\(r.stdout)")
    }

    @Test func badLayoutsAreRefusedBeforeCommunication() throws {
        let r = try TorusBinary.torus(["check", "attention", "--method", "rings"])
        #expect(r.status != 0 && r.stderr.contains("unknown method 'rings'"), "\(r.output)")
    }
}
