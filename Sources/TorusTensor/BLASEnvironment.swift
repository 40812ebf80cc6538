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

    /// The OpenBLAS core this process should load, from `TORUS_BLAS_CORE`: unset keeps an
    /// `OPENBLAS_CORETYPE` already in the environment (a user's or a machine's preset) and
    /// otherwise takes `preferredCoreType`; `auto` takes `preferredCoreType` whatever the
    /// environment says; any other value names the core. nil: let the library detect it.
    public static func chosenCoreType(environment: [String: String] = ProcessInfo.processInfo.environment,
                                      preferred: String? = preferredCoreType()) -> String? {
        switch environment["TORUS_BLAS_CORE"] {
        case nil, "": return environment["OPENBLAS_CORETYPE"] ?? preferred
        case "auto": return preferred
        case let named?: return named
        }
    }

    /// The core the environment's `OPENBLAS_CORETYPE` holds OpenBLAS to when it is not the one
    /// torus would choose and `TORUS_BLAS_CORE` says nothing (so whether it is slower is worth
    /// measuring and saying); nil otherwise.
    public static func environmentForcedCore(environment: [String: String] = ProcessInfo.processInfo.environment,
                                             preferred: String? = preferredCoreType()) -> String? {
        guard (environment["TORUS_BLAS_CORE"] ?? "").isEmpty, let forced = environment["OPENBLAS_CORETYPE"], forced != preferred else { return nil }
        return forced
    }

    /// Variables to add to the environment before OpenBLAS loads (`chosenCoreType` and the
    /// thread count; an empty value means remove the variable); the thread count the user set
    /// is kept.
    public static func environmentOverrides(environment: [String: String] = ProcessInfo.processInfo.environment,
                                            preferred: String? = preferredCoreType()) -> [String: String] {
        var out: [String: String] = [:]
        let chosen = chosenCoreType(environment: environment, preferred: preferred)
        if let core = chosen, core != environment["OPENBLAS_CORETYPE"] {
            out["OPENBLAS_CORETYPE"] = core
        } else if chosen == nil, environment["OPENBLAS_CORETYPE"] != nil {
            out["OPENBLAS_CORETYPE"] = ""  // unset: the library detects the core
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
