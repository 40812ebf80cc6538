import Foundation

/// A `torus serve` (or `mpirun ... torus serve`) child process on 127.0.0.1 with a free port,
/// its log in a file, stopped (SIGKILL if it must) when the test ends.
final class ServerProcess {
    let process = Process()
    let logPath: String
    private(set) var port = 0

    var base: String { "http://127.0.0.1:\(port)" }
    var pid: Int32 { process.processIdentifier }
    var log: String { (try? String(contentsOfFile: logPath, encoding: .utf8)) ?? "" }

    /// Starts `executable args` and waits (up to `timeout` s) for "listening on http://HOST:PORT".
    init(_ executable: String, _ args: [String], timeout: Double = 60, environment: [String: String] = [:]) throws {
        logPath = NSTemporaryDirectory() + "torus-serve-\(UUID().uuidString).log"
        FileManager.default.createFile(atPath: logPath, contents: nil)
        process.executableURL = URL(fileURLWithPath: executable)
        process.arguments = args
        var env = ProcessInfo.processInfo.environment
        for (k, v) in environment { env[k] = v }
        process.environment = env
        let handle = try FileHandle(forWritingTo: URL(fileURLWithPath: logPath))
        process.standardOutput = handle
        process.standardError = handle
        try process.run()
        let deadline = Date().addingTimeInterval(timeout)
        while Date() < deadline && process.isRunning {
            if let line = log.split(separator: "\n").first(where: { $0.contains("listening on http://") }),
               let url = line.split(separator: " ").first(where: { $0.hasPrefix("http://") }),
               let p = url.split(separator: ":").last.flatMap({ Int($0) }) {
                port = p
                return
            }
            Thread.sleep(forTimeInterval: 0.05)
        }
        stop()
        throw ServerStartError(log: log)
    }

    /// Waits up to `timeout` s for the process to exit by itself; its status, or nil if it did not.
    func waitForExit(timeout: Double) -> Int32? {
        let deadline = Date().addingTimeInterval(timeout)
        while process.isRunning && Date() < deadline { Thread.sleep(forTimeInterval: 0.05) }
        return process.isRunning ? nil : process.terminationStatus
    }

    func stop() {
        guard process.isRunning else { return }
        kill(process.processIdentifier, SIGTERM)
        if waitForExit(timeout: 15) == nil { kill(process.processIdentifier, SIGKILL); process.waitUntilExit() }
    }

    deinit { stop() }
}

struct ServerStartError: Error, CustomStringConvertible {
    let log: String
    var description: String { "the server did not start:\n\(log)" }
}

/// The Python with the official `openai` client, httpx and prometheus_client: `TORUS_TEST_PYTHON`,
/// else the repository's `.venv-test` (which `launch/test` sets up from PyPI).
enum ClientPython {
    static let repository = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent().path

    static let executable: String? = {
        let env = ProcessInfo.processInfo.environment
        let candidates = [env["TORUS_TEST_PYTHON"], repository + "/.venv-test/bin/python"].compactMap { $0 }
        for c in candidates where FileManager.default.isExecutableFile(atPath: c) {
            if let r = try? TorusBinary.run(c, ["-c", "import openai, prometheus_client\ntry:\n import httpx2\nexcept ImportError:\n import httpx"], timeout: 60), r.status == 0 { return c }
        }
        return nil
    }()

    static let skipMessage = "OpenAI client tests skipped: no Python with openai, httpx and prometheus_client "
        + "(launch/test installs them into .venv-test; or set TORUS_TEST_PYTHON)"
}
