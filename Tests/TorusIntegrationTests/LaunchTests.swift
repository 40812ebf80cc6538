import Foundation
import Testing

/// `torus plan` and `torus launch`: refusals with reasons, the printed mpirun command, and a
/// real launch through mpirun.
@Suite(.serialized) struct LaunchTests {
    func setUp() throws -> (dir: String, config: String) {
        let dir = NSTemporaryDirectory() + "torus-launch-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        let config = dir + "/job.yaml"
        try """
        \(TestYAML.model(layers: 4))
        \(TestYAML.shortRun(out: dir + "/out", heldout: "synth"))
        sequence_parallel:
          size: 2
          method: tokenring
        """.write(toFile: config, atomically: true, encoding: .utf8)
        try "# test hosts\nhostA slots=2\nhostB slots=2\n".write(toFile: dir + "/hosts", atomically: true, encoding: .utf8)
        return (dir, config)
    }

    @Test func planPrintsStagesChunksHostsAndBubble() throws {
        let (dir, config) = try setUp()
        try (String(contentsOfFile: config, encoding: .utf8) + "\npipeline_parallel:\n  size: 2\n").write(toFile: dir + "/pp.yaml", atomically: true, encoding: .utf8)
        let r = try TorusBinary.torus(["plan", "--config", dir + "/pp.yaml", "--hostfile", dir + "/hosts"])
        #expect(r.status == 0, "\(r.output)")
        #expect(r.stdout.contains("plan: 4 ranks = DP 1 x PP 2 x SP 2"))
        #expect(r.stdout.contains("stage 0: layers 0-1 + embedding"))
        #expect(r.stdout.contains("stage 1: layers 2-3 + norm + lm_head"))
        #expect(r.stdout.contains("sp0: tokens 0-7 and 24-31"))
        #expect(r.stdout.contains("host hostB: ranks 2,3"))
        #expect(r.stdout.contains("every sequence-parallel group stays inside one host"))
        #expect(r.stdout.contains("(p-1)/(m+p-1) = 1/2 = 50.0%"))
    }

    /// A 1,024-rank job over 128 hosts of 8 slots: the plan (every host, SP groups inside hosts,
    /// message tags within MPI's portable bound) and launch's mpirun command, without running it.
    @Test func aThousandRankHostfileIsPlannedAndLaunchedDry() throws {
        let (dir, _) = try setUp()
        let hosts = "# 128 hosts x 8 slots\n" + (0..<128).map { String(format: "node%03d slots=8", $0) }.joined(separator: "\n") + "\n"
        try hosts.write(toFile: dir + "/hosts1024", atomically: true, encoding: .utf8)
        try """
        \(TestYAML.model(layers: 4))
        \(TestYAML.shortRun(out: dir + "/out", heldout: "synth").replacingOccurrences(of: "batch_size: 4", with: "batch_size: 64"))
        sequence_parallel:
          size: 8
          method: tokenring
        pipeline_parallel:
          size: 4
        """.write(toFile: dir + "/big.yaml", atomically: true, encoding: .utf8)
        let plan = try TorusBinary.torus(["plan", "--config", dir + "/big.yaml", "--hostfile", dir + "/hosts1024"])
        #expect(plan.status == 0, "\(plan.output)")
        #expect(plan.stdout.contains("plan: 1024 ranks = DP 32 x PP 4 x SP 8"), "\(plan.output)")
        #expect(plan.stdout.contains("host node127: ranks 1016,1017,1018,1019,1020,1021,1022,1023"))
        #expect(plan.stdout.contains("every sequence-parallel group stays inside one host"))
        #expect(plan.stdout.contains("message tags: up to") && plan.stdout.contains("within the 32767 every MPI accepts"), "\(plan.output)")
        let dry = try TorusBinary.torus(["launch", "--config", dir + "/big.yaml", "--hostfile", dir + "/hosts1024", "--dry-run"])
        #expect(dry.status == 0, "\(dry.output)")
        #expect(dry.stdout.contains("mpirun -np 1024 --hostfile \(dir)/hosts1024"), "\(dry.output)")
    }

    @Test func impossiblePlansAreRefusedWithTheReason() throws {
        let (dir, config) = try setUp()
        let r1 = try TorusBinary.torus(["plan", "--config", config, "--np", "3"])
        #expect(r1.status != 0 && r1.stderr.contains("world size 3 is not a multiple of pipeline_parallel (1) x sequence_parallel (2)"), "\(r1.output)")
        let r2 = try TorusBinary.torus(["plan", "--config", config, "--np", "8", "--hostfile", dir + "/hosts"])
        #expect(r2.status != 0 && r2.stderr.contains("the hostfile has 4 slots for 8 ranks"), "\(r2.output)")
        try (String(contentsOfFile: config, encoding: .utf8) + "\npipeline_parallel:\n  size: 5\n").write(toFile: dir + "/pp.yaml", atomically: true, encoding: .utf8)
        let r3 = try TorusBinary.torus(["plan", "--config", dir + "/pp.yaml", "--np", "10"])
        #expect(r3.status != 0 && r3.stderr.contains("5 pipeline stages for 4 layers"), "\(r3.output)")
        let text = try String(contentsOfFile: config, encoding: .utf8).replacingOccurrences(of: "seq_len: 32", with: "seq_len: 30")
        try text.write(toFile: dir + "/odd.yaml", atomically: true, encoding: .utf8)
        let r4 = try TorusBinary.torus(["plan", "--config", dir + "/odd.yaml", "--np", "2"])
        #expect(r4.status != 0 && r4.stderr.contains("a sequence of 30 tokens cannot be split into 4 equal zigzag chunks"), "\(r4.output)")
        try "hostA slots=two\n".write(toFile: dir + "/badhosts", atomically: true, encoding: .utf8)
        let r5 = try TorusBinary.torus(["plan", "--config", config, "--hostfile", dir + "/badhosts"])
        #expect(r5.status != 0 && r5.stderr.contains("line 1: 'slots=two' is not slots=<positive integer>"), "\(r5.output)")
    }

    @Test func launchPrintsTheMpirunCommandAndRunsIt() throws {
        let (dir, config) = try setUp()
        let dry = try TorusBinary.torus(["launch", "--config", config, "--np", "2", "--dry-run", "--", "--tag-output"])
        #expect(dry.status == 0, "\(dry.output)")
        let line = dry.stdout.split(separator: "\n").first { $0.hasPrefix("mpirun command: ") }.map(String.init) ?? ""
        #expect(line.contains("mpirun -np 2"))
        #expect(line.contains("--tag-output"))
        #expect(line.contains("train --config \(config)"))
        if getuid() == 0 { #expect(line.contains("--allow-run-as-root")) }
        #expect(line.contains("--bind-to ") && line.contains("OPENBLAS_NUM_THREADS="), "\(line)")
        // Hosts sharing one machine's cores (the simulated cluster): no binding, chosen BLAS threads.
        let shared = try TorusBinary.torus(["launch", "--config", config, "--np", "2", "--bind-to", "none", "--blas-threads", "1", "--dry-run"])
        #expect(shared.stdout.contains("--bind-to none") && shared.stdout.contains("OPENBLAS_NUM_THREADS=1"), "\(shared.output)")
        let bad = try TorusBinary.torus(["launch", "--config", config, "--np", "2", "--bind-to", "socket", "--dry-run"])
        #expect(bad.status != 0 && bad.stderr.contains("--bind-to must be core, none or auto"), "\(bad.output)")
        let real = try TorusBinary.torus(["launch", "--config", config, "--np", "2"], timeout: 180)
        #expect(real.status == 0 && !real.timedOut, "\(real.output)")
        #expect(real.stdout.contains("sequence parallel 2 (tokenring, zigzag)"), "\(real.stdout)")
        #expect(FileManager.default.fileExists(atPath: dir + "/out/model/model.safetensors"))
    }
}

extension LaunchTests {
    /// A rank killed mid-run through `torus launch` ends the whole job with an error naming it.
    @Test func killedRankThroughLaunchEndsTheJob() throws {
        let (dir, config) = try setUp()
        let text = try String(contentsOfFile: config, encoding: .utf8).replacingOccurrences(of: "steps: 3", with: "steps: 40")
        try text.write(toFile: dir + "/long.yaml", atomically: true, encoding: .utf8)
        let began = Date()
        let r = try TorusBinary.torus(["launch", "--config", dir + "/long.yaml", "--np", "2", "--", "-x", "TORUS_FAULT_KILL=1:2"], timeout: 120)
        #expect(!r.timedOut, "the job hung:\n\(r.output)")
        #expect(r.status != 0)
        #expect(r.output.contains("process rank 1") && r.output.contains("signal 9"), "\(r.output)")
        #expect(r.stderr.contains("mpirun exited with status"), "\(r.stderr)")
        #expect(Date().timeIntervalSince(began) < 100)
    }
}
