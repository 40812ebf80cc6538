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

    /// Exactness test 5 of chunk reuse: a blend split over N sequence-parallel ranks (cached KV
    /// laid on the ranks owning its positions, the top-r choice global, recomputed rows
    /// attending across ranks) gives the one-rank result: logits, blended KV, chosen rows.
    @Test(arguments: ["ring", "tokenring"], [1, 2, 3, 4])
    func chunkFusionAcrossRanksMatchesOneRank(method: String, ranks: Int) throws {
        let r = try TorusBinary.mpirun(ranks: ranks, ["check", "fusion", "--method", method], timeout: 120)
        #expect(!r.timedOut, "\(method) fusion on \(ranks) ranks timed out:\n\(r.output)")
        #expect(r.status == 0, "\(r.output)")
        #expect(r.stdout.contains("fusion check passed: \(method) on \(ranks) ranks"), "\(r.output)")
        // 2 layouts x 6 selectors, each reported.
        #expect(r.stdout.components(separatedBy: "\n").filter { $0.hasPrefix("ok ") }.count == 12, "\(r.stdout)")
    }

    @Test func unknownMethodIsRefused() throws {
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

/// Prefill split over ranks, decoding with the distributed KV cache: same tokens as one rank.
@Suite(.serialized) struct ShardedGenerationTests {
    @Test func distributedPrefillAndDecodeMatchOneRank() throws {
        let dir = NSTemporaryDirectory() + "torus-sgen-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        try """
        \(TestYAML.model(ffn: 48, vocab: 64))
        seed: 3
        """.write(toFile: dir + "/m.yaml", atomically: true, encoding: .utf8)
        #expect(try TorusBinary.torus(["init", "--config", dir + "/m.yaml", "--out", dir + "/model"]).status == 0)
        let prompt = (0..<24).map { String(($0 * 37 + 5) % 64) }.joined(separator: ",")
        let base = ["generate", "--model", dir + "/model", "--prompt-ids", prompt, "--max-tokens", "12", "--ids"]
        let single = try TorusBinary.torus(base)
        try #require(single.status == 0, "\(single.output)")
        let expected = single.stdout.trimmingCharacters(in: .whitespacesAndNewlines)
        #expect(expected.split(separator: ",").count == 12)
        for (ranks, method, layout) in [(2, "ring", "zigzag"), (3, "tokenring", "contiguous"), (4, "tokenring", "zigzag")] {
            let r = try TorusBinary.mpirun(ranks: ranks, base + ["--sequence-parallel", method, "--layout", layout], timeout: 120)
            #expect(r.status == 0 && !r.timedOut, "\(r.output)")
            #expect(r.stdout.trimmingCharacters(in: .whitespacesAndNewlines) == expected, "np=\(ranks) \(method) \(layout): \(r.stdout)")
        }
        // 24 tokens cannot be split into 2 x 5 zigzag chunks.
        let bad = try TorusBinary.mpirun(ranks: 5, base + ["--sequence-parallel", "ring", "--layout", "zigzag"], timeout: 60)
        #expect(bad.status != 0 && bad.stderr.contains("cannot be split into 10 equal zigzag chunks"), "\(bad.output)")
    }
}
