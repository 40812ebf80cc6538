import Foundation
import TorusTensor

/// Says once, on the first rank, when `OPENBLAS_CORETYPE` holds OpenBLAS to a core slower than
/// the one this CPU runs best, with the measured factor: both cores' single-thread sgemm
/// (n=512) is measured in a child `torus bench sgemm-probe` and remembered per CPU model in
/// `~/.cache/torus/blas-cores.json` (under `XDG_CACHE_HOME` when set).
enum BLASCoreCheck {
    /// The warning to print, or nil when the loaded core is the chosen one or about as fast.
    static func warning(environment: [String: String] = ProcessInfo.processInfo.environment) -> String? {
        guard let forced = BLASEnvironment.environmentForcedCore(environment: environment) else { return nil }
        let best = BLASEnvironment.preferredCoreType()
        guard let loaded = gflops(core: forced), let faster = gflops(core: best), faster > 1.1 * loaded else { return nil }
        return String(format: "torus: OPENBLAS_CORETYPE=%@ in the environment holds OpenBLAS to its %@ kernels; this CPU runs %@ kernels "
                      + "%.2fx faster (sgemm n=512, 1 thread: %.0f against %.0f GFLOP/s). TORUS_BLAS_CORE=auto lets torus choose; "
                      + "TORUS_BLAS_CORE=%@ keeps this one and silences this note.",
                      forced, forced, best ?? "the library's own choice of", faster / loaded, faster, loaded, forced)
    }

    /// Prints `warning()` once per job: on rank 0 of an mpirun job, or in a plain process.
    static func warnOnce() {
        let env = ProcessInfo.processInfo.environment
        if let rank = env["OMPI_COMM_WORLD_RANK"], rank != "0" { return }
        if let text = warning(environment: env) { FileHandle.standardError.write(Data((text + "\n").utf8)) }
    }

    /// Single-thread sgemm GFLOP/s with OpenBLAS core `core` (nil: the library's detection),
    /// from the cache or a child process.
    static func gflops(core: String?) -> Double? {
        let key = cpuModel() + "|" + (core ?? "detected")
        let env = ProcessInfo.processInfo.environment
        let cacheDir = (env["XDG_CACHE_HOME"] ?? ((env["HOME"] ?? NSHomeDirectory()) + "/.cache")) + "/torus"
        let cachePath = cacheDir + "/blas-cores.json"
        var cache = (try? JSONDecoder().decode([String: Double].self, from: Data(contentsOf: URL(fileURLWithPath: cachePath)))) ?? [:]
        if let known = cache[key] { return known }
        let p = Process()
        p.executableURL = URL(fileURLWithPath: "/proc/self/exe")
        p.arguments = ["bench", "sgemm-probe"]
        var childEnv = env
        childEnv["OPENBLAS_CORETYPE"] = core
        childEnv["OPENBLAS_NUM_THREADS"] = "1"
        childEnv["TORUS_NO_REEXEC"] = "1"
        for k in childEnv.keys where k.hasPrefix("OMPI_") || k.hasPrefix("PMIX_") { childEnv[k] = nil }
        p.environment = childEnv
        let out = Pipe()
        p.standardOutput = out
        p.standardError = FileHandle.nullDevice
        guard (try? p.run()) != nil else { return nil }
        let data = out.fileHandleForReading.readDataToEndOfFile()
        p.waitUntilExit()
        guard p.terminationStatus == 0, let value = Double(String(decoding: data, as: UTF8.self).trimmingCharacters(in: .whitespacesAndNewlines)) else { return nil }
        cache[key] = value
        try? FileManager.default.createDirectory(atPath: cacheDir, withIntermediateDirectories: true)
        try? JSONEncoder().encode(cache).write(to: URL(fileURLWithPath: cachePath))
        return value
    }

    /// "vendor family model: name" of the first CPU (the cache key).
    static func cpuModel() -> String {
        let info = (try? String(contentsOfFile: "/proc/cpuinfo", encoding: .utf8)) ?? ""
        func field(_ name: String) -> String {
            let line = info.split(separator: "\n").first { $0.hasPrefix(name) }
            return line?.split(separator: ":", maxSplits: 1).last.map { $0.trimmingCharacters(in: .whitespaces) } ?? "?"
        }
        return "\(field("vendor_id")) \(field("cpu family")) \(field("model\t")): \(field("model name"))"
    }
}
