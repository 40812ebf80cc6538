import Foundation
import Testing
import TorusModel

/// The simulated cluster (launch/cluster): hosts as network namespaces over TCP, launched with
/// `torus launch` and a hostfile. Needs root and `ip netns`; skipped with a message otherwise.
enum ClusterSupport {
    static let available: Bool = {
        guard getuid() == 0, FileManager.default.isExecutableFile(atPath: "/usr/sbin/ip") else { return false }
        let probe = "torus-probe-\(getpid())"
        guard let add = try? TorusBinary.run("/usr/sbin/ip", ["netns", "add", probe], timeout: 10), add.status == 0 else { return false }
        _ = try? TorusBinary.run("/usr/sbin/ip", ["netns", "del", probe], timeout: 10)
        return true
    }()
    static var script: String {
        URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
            .appendingPathComponent("launch/cluster").path
    }
}

@Suite(.serialized, .enabled(if: ClusterSupport.available, "simulated cluster skipped: needs root and ip netns"))
struct ClusterTests {
    func config(_ dir: String, out: String, sp: Bool) throws -> String {
        let path = dir + "/\(UUID().uuidString).yaml"
        try """
        \(TestYAML.model())
        \(TestYAML.shortRun(out: out, heldout: "none"))
        \(sp ? "sequence_parallel:\n  size: 2\n  method: ring\n" : "")
        """.write(toFile: path, atomically: true, encoding: .utf8)
        return path
    }

    /// 2 and 4 namespace hosts (DP, and DP x SP with each SP group spanning hosts) match the
    /// single-host run (TrainingTests' stated tolerance); the 2-host links also carry a 0.2 ms delay.
    @Test(arguments: [(2, false), (4, true)])
    func clusterTrainingMatchesOneHost(hosts: Int, sp: Bool) throws {
        let delay = hosts == 2 ? "0.2ms" : "0"
        let dir = NSTemporaryDirectory() + "torus-cluster-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        let local = try TorusBinary.torus(["launch", "--config", try config(dir, out: dir + "/local", sp: sp), "--np", String(hosts)], timeout: 180)
        try #require(local.status == 0, "\(local.output)")
        let r = try TorusBinary.run("/bin/bash", [ClusterSupport.script, "--hosts", String(hosts), "--slots", "1", "--rate", "1gbit", "--delay", delay, "--",
                                                  "--config", try config(dir, out: dir + "/cluster", sp: sp)],
                                    timeout: 240, environment: ["TORUS_BIN": TorusBinary.path])
        #expect(!r.timedOut && r.status == 0, "\(r.output)")
        #expect(r.output.contains("btl_tcp_if_include 10.77.0.0/24"))
        #expect(r.output.contains("--bind-to none"), "simulated hosts share the cores; binding would put every host's rank on core 0")
        if hosts == 2 {
            #expect(r.output.contains("one-way delay 200us (netem)") || r.output.contains("one-way delay 200us (tbf + torus-netdelay)"), "\(r.output)")
        }
        let base = try TrainingTests.lines(dir + "/local")
        #expect(base.count == 3)
        let baseWeights = try HFCheckpoint.load(directory: dir + "/local/model").parameters.flat.array
        try TrainingTests.expectMatches(dir + "/cluster", base: base, baseWeights: baseWeights, "\(hosts) hosts")
        let left = try TorusBinary.run("/usr/sbin/ip", ["netns", "list"], timeout: 10)
        #expect(!left.stdout.contains("torus-h"), "namespaces left behind: \(left.stdout)")
    }
}
