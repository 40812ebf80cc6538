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

@Suite struct TimelineTests {
    /// A traced multi-rank run leaves one timeline per rank that `torus trace` merges.
    @Test func tracedRunMergesIntoChromeTrace() throws {
        let dir = NSTemporaryDirectory() + "torus-trace-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
        let r = try TorusBinary.run("/usr/bin/mpirun", TorusBinary.rootFlags + ["--oversubscribe", "-np", "2", "-x", "TORUS_TRACE=\(dir)",
                                    TorusBinary.path, "bench", "attention", "--seq", "64", "--heads", "2", "--kv-heads", "1",
                                    "--head-dim", "8", "--steps", "1"], timeout: 120)
        #expect(r.status == 0 && !r.timedOut, "\(r.output)")
        #expect(r.stdout.contains("timeline: communication"), "\(r.stdout)")
        let t = try TorusBinary.torus(["trace", "--dir", dir])
        #expect(t.status == 0, "\(t.output)")
        #expect(t.stdout.contains("from 2 rank(s)"))
        let data = try Data(contentsOf: URL(fileURLWithPath: dir + "/trace.json"))
        let obj = try JSONSerialization.jsonObject(with: data) as? [String: Any]
        let events = obj?["traceEvents"] as? [[String: Any]] ?? []
        #expect(events.contains { ($0["cat"] as? String) == "send" })
        #expect(events.contains { ($0["cat"] as? String) == "compute" })
    }
}
