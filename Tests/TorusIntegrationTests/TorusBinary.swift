import Foundation

/// Runs the built `torus` executable (next to the test bundle, or `TORUS_BIN`) and `mpirun`,
/// each with a timeout so that a deadlock fails the test instead of hanging the run.
enum TorusBinary {
    static var path: String {
        if let explicit = ProcessInfo.processInfo.environment["TORUS_BIN"] { return explicit }
        // swift test runs .build/<config>/TorusPackageTests.xctest; products sit beside it.
        let bundleDir = URL(fileURLWithPath: CommandLine.arguments[0]).deletingLastPathComponent()
        for dir in [bundleDir, Bundle.main.bundleURL.deletingLastPathComponent(), Bundle.main.bundleURL] {
            let candidate = dir.appendingPathComponent("torus").path
            if FileManager.default.isExecutableFile(atPath: candidate) { return candidate }
        }
        return bundleDir.appendingPathComponent("torus").path
    }

    struct Result {
        let status: Int32
        let stdout: String
        let stderr: String
        let timedOut: Bool
        var output: String { stdout + stderr }
    }

    static var rootFlags: [String] { getuid() == 0 ? ["--allow-run-as-root"] : [] }

    /// Runs `executable args` with a timeout (seconds); the process is killed when it expires.
    static func run(_ executable: String, _ args: [String], timeout: Double = 120, environment: [String: String] = [:]) throws -> Result {
        let p = Process()
        p.executableURL = URL(fileURLWithPath: executable)
        p.arguments = args
        var env = ProcessInfo.processInfo.environment
        for (k, v) in environment { env[k] = v }
        p.environment = env
        let outURL = URL(fileURLWithPath: NSTemporaryDirectory() + "torus-test-\(UUID().uuidString).out")
        let errURL = URL(fileURLWithPath: NSTemporaryDirectory() + "torus-test-\(UUID().uuidString).err")
        FileManager.default.createFile(atPath: outURL.path, contents: nil)
        FileManager.default.createFile(atPath: errURL.path, contents: nil)
        defer { try? FileManager.default.removeItem(at: outURL); try? FileManager.default.removeItem(at: errURL) }
        p.standardOutput = try FileHandle(forWritingTo: outURL)
        p.standardError = try FileHandle(forWritingTo: errURL)
        try p.run()
        let deadline = Date().addingTimeInterval(timeout)
        var timedOut = false
        while p.isRunning {
            if Date() > deadline {
                timedOut = true
                p.terminate()
                Thread.sleep(forTimeInterval: 2)
                if p.isRunning { kill(p.processIdentifier, SIGKILL) }
                break
            }
            Thread.sleep(forTimeInterval: 0.05)
        }
        p.waitUntilExit()
        let out = (try? String(contentsOf: outURL, encoding: .utf8)) ?? ""
        let err = (try? String(contentsOf: errURL, encoding: .utf8)) ?? ""
        return Result(status: p.terminationStatus, stdout: out, stderr: err, timedOut: timedOut)
    }

    static func torus(_ args: [String], timeout: Double = 120) throws -> Result {
        try run(path, args, timeout: timeout)
    }

    /// `mpirun --oversubscribe -np N torus args`.
    static func mpirun(ranks: Int, _ args: [String], timeout: Double = 120) throws -> Result {
        let mpirun = ["/usr/bin/mpirun", "/usr/local/bin/mpirun"].first { FileManager.default.isExecutableFile(atPath: $0) } ?? "/usr/bin/mpirun"
        return try run(mpirun, rootFlags + ["--oversubscribe", "-np", String(ranks), path] + args, timeout: timeout)
    }
}
