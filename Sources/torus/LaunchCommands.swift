import ArgumentParser
import Foundation
import TorusTensor
import TorusTrain

/// Reads the config and hostfile and makes the plan.
struct PlanInputs {
    let config: RunConfig
    let plan: ParallelPlan
    let hosts: [HostSlots]?

    init(configPath: String, np: Int?, hostfile: String?) throws {
        config = try RunConfig.load(path: configPath)
        var hostList: [HostSlots]?
        if let hostfile {
            guard let text = try? String(contentsOfFile: hostfile, encoding: .utf8) else {
                throw ValidationErrorMessage("hostfile \(hostfile) does not exist or cannot be read")
            }
            hostList = try HostSlots.parse(hostfile: text, path: hostfile)
        }
        hosts = hostList
        guard let world = np ?? hostList.map({ $0.reduce(0) { $0 + $1.slots } }) else {
            throw ValidationErrorMessage("give --np N (or a hostfile, whose slots then set the number of ranks)")
        }
        // The same plan the trainer makes from the same options.
        plan = try Trainer.plan(config: config.model, options: config.trainOptions(), worldSize: world, hosts: hostList)
    }
}

struct PlanCommand: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "plan",
        abstract: "Print how a training config is laid out over N ranks and the hosts of a hostfile, or why it cannot run.")
    @Option(help: "YAML config.") var config: String
    @Option(help: "Number of ranks (default: the hostfile's slots).") var np: Int?
    @Option(help: "Open MPI hostfile (lines 'host slots=N').") var hostfile: String?

    func run() throws {
        let inputs = try PlanInputs(configPath: config, np: np, hostfile: hostfile)
        for line in inputs.plan.lines() { print(line) }
    }
}

struct LaunchCommand: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "launch",
        abstract: "Plan a training job (or, with --serve, a server), print the plan and the exact mpirun command, and run it.")
    @Option(help: "YAML config.") var config: String
    @Flag(help: "Start `torus serve` with the config's serve: section on the ranks instead of training.") var serve = false
    @Option(help: "Number of ranks (default: the hostfile's slots).") var np: Int?
    @Option(help: "Open MPI hostfile (lines 'host slots=N').") var hostfile: String?
    @Flag(help: "Print the plan and the mpirun command without running it.") var dryRun = false
    @Option(help: "Core binding: core, none, or auto (core when a host's ranks fit its cores). Use none when several hosts of the hostfile share one machine's cores.")
    var bindTo: String = "auto"
    @Option(help: "BLAS threads per rank (default: a host's cores / its ranks).") var blasThreads: Int?
    @Argument(parsing: .postTerminator, help: "Extra mpirun arguments after --.") var extra: [String] = []

    func validate() throws {
        guard ["auto", "core", "none"].contains(bindTo) else { throw ValidationError("--bind-to must be core, none or auto, not '\(bindTo)'") }
        if let blasThreads, blasThreads < 1 { throw ValidationError("--blas-threads must be at least 1") }
    }

    func run() throws {
        let command: [String]
        if serve {
            let s = try ServeSection.load(path: config)
            var hosts: [String] = []
            if let hostfile {
                guard let text = try? String(contentsOfFile: hostfile, encoding: .utf8) else {
                    throw ValidationErrorMessage("hostfile \(hostfile) does not exist or cannot be read")
                }
                hosts = try HostSlots.parse(hostfile: text, path: hostfile).flatMap { h in Array(repeating: h.host, count: h.slots) }
            }
            guard let world = np ?? (hosts.isEmpty ? nil : hosts.count) else {
                throw ValidationErrorMessage("give --np N (or a hostfile, whose slots then set the number of ranks)")
            }
            guard s.model != nil else { throw ValidationErrorMessage("config \(config): serve.model (the model directory) is required with --serve") }
            print("serve plan: \(world) rank(s); rank 0\(hosts.first.map { " on \($0)" } ?? "") runs HTTP on \(s.host):\(s.port) and the scheduler; "
                  + (world > 1 ? "prompts of \(s.spThreshold)+ tokens are prefilled across all ranks with \(s.spMethod) (\(s.spLayout)), "
                     + "each rank keeping its positions' KV; shorter ones run on one rank each" : "one rank serves alone"))
            let perHost = hosts.isEmpty ? world : Dictionary(grouping: hosts, by: { $0 }).values.map(\.count).max() ?? world
            // --enable-recovery: a dead rank does not take rank 0 down at once, so its watchdog can
            // report 503 on /health and end the job naming the rank.
            command = mpirunCommand(world: world, perHost: perHost, program: ["serve", "--config", config], mpirunFlags: ["--enable-recovery"])
        } else {
            let inputs = try PlanInputs(configPath: config, np: np, hostfile: hostfile)
            for line in inputs.plan.lines() { print(line) }
            let plan = inputs.plan
            let perHost = plan.hosts.map { h in plan.rankHosts.filter { $0 == h }.count }.max() ?? plan.world
            command = mpirunCommand(world: plan.world, perHost: perHost, program: ["train", "--config", config])
        }
        print("mpirun command: " + command.map(shellQuote).joined(separator: " "))
        if dryRun { return }
        fflush(stdout)
        let p = Process()
        p.executableURL = URL(fileURLWithPath: "/usr/bin/env")
        p.arguments = command
        try p.run()
        p.waitUntilExit()
        if p.terminationStatus != 0 {
            warn("torus launch: mpirun exited with status \(p.terminationStatus) (Open MPI's message above names the rank that failed)")
            throw ExitCode(p.terminationStatus)
        }
    }

    func mpirunCommand(world: Int, perHost: Int, program: [String], mpirunFlags: [String] = []) -> [String] {
        let cores = BLASEnvironment.availableCores
        var args = ["mpirun", "-np", String(world)]
        if let hostfile { args += ["--hostfile", hostfile] }
        if getuid() == 0 { args.append("--allow-run-as-root") }
        args += ["--map-by", "slot"]
        if hostfile == nil && world > cores { args.append("--oversubscribe") }
        // Bind each rank to a core when they fit; otherwise let the OS schedule.
        args += ["--bind-to", bindTo == "auto" ? (perHost <= cores ? "core" : "none") : bindTo]
        // The ranks load the core this launcher chose (TORUS_BLAS_CORE, else the environment's, else the preferred).
        if let core = BLASEnvironment.chosenCoreType() { args += ["-x", "OPENBLAS_CORETYPE=\(core)"] }
        if let choice = ProcessInfo.processInfo.environment["TORUS_BLAS_CORE"] { args += ["-x", "TORUS_BLAS_CORE=\(choice)"] }
        args += ["-x", "OPENBLAS_NUM_THREADS=\(blasThreads ?? max(1, cores / max(1, perHost)))"]
        args += mpirunFlags
        args += extra
        args += [executablePath()] + program
        return args
    }

    func executablePath() -> String {
        (try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/exe")) ?? CommandLine.arguments[0]
    }
}

func shellQuote(_ s: String) -> String {
    s.allSatisfy { $0.isLetter || $0.isNumber || "-_./=:,@+".contains($0) } ? s : "'" + s.replacingOccurrences(of: "'", with: "'\\''") + "'"
}
