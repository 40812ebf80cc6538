#if canImport(Glibc)
import Glibc
#endif
import Foundation

/// Decides the OpenBLAS kernel and thread count for this process.
///
/// Debian's OpenBLAS picks its generic "Prescott" kernel on these CPUs unless
/// `OPENBLAS_CORETYPE` names an AVX-512 core before the library loads (about 3x slower
/// otherwise), so entry points call `environmentOverrides()` and re-execute themselves or pass
/// the variables to `mpirun` before any BLAS call.
public enum BLASEnvironment {
    /// The `OPENBLAS_CORETYPE` to use on this CPU, or nil when the CPU has no AVX-512 (the
    /// library's own detection is then fine).
    public static func preferredCoreType(cpuinfo: String? = try? String(contentsOfFile: "/proc/cpuinfo", encoding: .utf8)) -> String? {
        guard let info = cpuinfo,
              let flagsLine = info.split(separator: "\n").first(where: { $0.hasPrefix("flags") })
        else { return nil }
        let flags = Set(flagsLine.split(separator: " ").map(String.init))
        let skylakeX = ["avx512f", "avx512bw", "avx512vl", "avx512dq", "avx512cd"]
        guard skylakeX.allSatisfy(flags.contains) else { return nil }
        return "SkylakeX"
    }

    /// Cores this process may use (sched affinity), at least 1.
    public static var availableCores: Int {
        ProcessInfo.processInfo.activeProcessorCount
    }

    /// BLAS threads for one rank: the host's cores divided by the ranks sharing the host
    /// (Open MPI's `OMPI_COMM_WORLD_LOCAL_SIZE`), at least 1.
    public static func threadsPerRank(environment: [String: String] = ProcessInfo.processInfo.environment,
                                      cores: Int = availableCores) -> Int {
        let local = environment["OMPI_COMM_WORLD_LOCAL_SIZE"].flatMap(Int.init) ?? 1
        return max(1, cores / max(1, local))
    }

    /// Variables to add to the environment before OpenBLAS loads. Values the user set are kept.
    public static func environmentOverrides(environment: [String: String] = ProcessInfo.processInfo.environment) -> [String: String] {
        var out: [String: String] = [:]
        if environment["OPENBLAS_CORETYPE"] == nil, let core = preferredCoreType() {
            out["OPENBLAS_CORETYPE"] = core
        }
        if environment["OPENBLAS_NUM_THREADS"] == nil && environment["OMP_NUM_THREADS"] == nil {
            out["OPENBLAS_NUM_THREADS"] = String(threadsPerRank(environment: environment))
        }
        return out
    }

    /// Applies the thread count for this rank to the loaded library (callable at any time).
    public static func applyThreadCount(environment: [String: String] = ProcessInfo.processInfo.environment) {
        if let explicit = environment["OPENBLAS_NUM_THREADS"].flatMap(Int.init) {
            BLAS.threads = explicit
        } else {
            BLAS.threads = threadsPerRank(environment: environment)
        }
    }
}
