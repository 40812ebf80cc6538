#if canImport(Glibc)
import Glibc
#endif
import Foundation
import TorusTensor

/// Makes the process run OpenBLAS's AVX-512 kernels with a sensible thread count.
///
/// `OPENBLAS_CORETYPE` is read only when the library loads, which happens before `main`, so
/// when it is missing the process sets it and re-executes itself once (same pid, same
/// arguments, so this also works for ranks started by `mpirun`). `TORUS_NO_REEXEC=1` turns
/// this off.
enum ProcessSetup {
    static func prepare() {
        let env = ProcessInfo.processInfo.environment
        let overrides = BLASEnvironment.environmentOverrides(environment: env)
        if !overrides.isEmpty && env["TORUS_REEXECED"] == nil && env["TORUS_NO_REEXEC"] == nil {
            for (k, v) in overrides { if v.isEmpty { unsetenv(k) } else { setenv(k, v, 1) } }
            setenv("TORUS_REEXECED", "1", 1)
            let args = CommandLine.arguments
            var cargs: [UnsafeMutablePointer<CChar>?] = args.map { strdup($0) }
            cargs.append(nil)
            execv("/proc/self/exe", &cargs)
            // exec failed: keep going with whatever kernel was loaded.
            FileHandle.standardError.write(Data("torus: warning: could not re-execute with OPENBLAS_CORETYPE set (\(String(cString: strerror(errno)))); BLAS may use its slow generic kernel\n".utf8))
        }
        BLASEnvironment.applyThreadCount()
    }
}
