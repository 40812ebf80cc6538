import CTorusKernels
import Foundation

/// The machine's measured limits, the yardsticks for achieved throughput: the fp32
/// fused-multiply-add peak (independent FMA chains in registers, the widest vectors the CPU
/// runs) and the memory copy bandwidth (a buffer far larger than the caches).
public enum MachineLimits {
    /// fp32 GFLOP/s of `threads` threads running the FMA loop together (best of three runs of
    /// about `seconds` / 3), and the vector width used (16 with AVX-512, 8 with AVX2).
    public static func fmaPeak(threads: Int, seconds: Double = 0.25) -> (gflops: Double, width: Int) {
        var width: Int32 = 0, sink: Float = 0
        // Calibrate the iteration count on one thread.
        var iterations = 1 << 16
        while true {
            let t0 = DispatchTime.now().uptimeNanoseconds
            _ = torus_fma_loop(iterations, &width, &sink)
            let dt = Double(DispatchTime.now().uptimeNanoseconds - t0) / 1e9
            if dt > seconds / 4 { iterations = Int(Double(iterations) * seconds / dt); break }
            iterations *= 4
        }
        // A peak: the best of three runs (a busy neighbour only ever lowers a run).
        let count = iterations / 3
        var best = 0.0
        for _ in 0..<3 {
            let run = onThreads(max(1, threads)) { _ in
                var w: Int32 = 0, s: Float = 0
                return torus_fma_loop(count, &w, &s)
            }
            best = max(best, run.work / run.elapsed / 1e9)
        }
        return (best, Int(width))
    }

    /// Runs `body(i)` on `n` threads of their own started together; the summed work the bodies
    /// return and the seconds from the common start until the last finished.
    static func onThreads(_ n: Int, _ body: @escaping @Sendable (Int) -> Double) -> (work: Double, elapsed: Double) {
        final class Shared: @unchecked Sendable {
            let lock = NSLock()
            var work = 0.0
            let ready = DispatchSemaphore(value: 0), go = DispatchSemaphore(value: 0), done = DispatchSemaphore(value: 0)
        }
        let shared = Shared()
        for i in 0..<n {
            Thread.detachNewThread {
                shared.ready.signal()
                shared.go.wait()
                let w = body(i)
                shared.lock.lock(); shared.work += w; shared.lock.unlock()
                shared.done.signal()
            }
        }
        for _ in 0..<n { shared.ready.wait() }
        let t0 = DispatchTime.now().uptimeNanoseconds
        for _ in 0..<n { shared.go.signal() }
        for _ in 0..<n { shared.done.wait() }
        return (shared.work, Double(DispatchTime.now().uptimeNanoseconds - t0) / 1e9)
    }

    /// Copy bandwidth in GB/s (bytes read plus bytes written) of `threads` threads each copying
    /// its share of a `megabytes` buffer, best of `repeats`.
    public static func copyBandwidth(threads: Int, megabytes: Int = 512, repeats: Int = 3) -> Double {
        let bytes = megabytes << 20
        let source = UnsafeMutableRawPointer.allocate(byteCount: bytes, alignment: 64)
        let target = UnsafeMutableRawPointer.allocate(byteCount: bytes, alignment: 64)
        defer { source.deallocate(); target.deallocate() }
        memset(source, 1, bytes)
        memset(target, 0, bytes)
        let n = max(1, threads), share = bytes / n
        let from = UInt(bitPattern: source), to = UInt(bitPattern: target)
        var best = 0.0
        for _ in 0..<max(1, repeats) {
            let run = onThreads(n) { i in
                guard let t = UnsafeMutableRawPointer(bitPattern: to + UInt(i * share)),
                      let f = UnsafeRawPointer(bitPattern: from + UInt(i * share)) else { return 0 }
                memcpy(t, f, share)
                return 2 * Double(share)
            }
            best = max(best, run.work / run.elapsed / 1e9)
        }
        return best
    }

    /// Square sgemm GFLOP/s at size `n` on the BLAS threads set now (after one warm-up call).
    public static func sgemm(n: Int) -> Double {
        let a = Tensor(zeros: [n, n]), b = Tensor(zeros: [n, n]), c = Tensor(zeros: [n, n])
        var rng = SeededGenerator(seed: 1)
        a.fillNormal(std: 1, generator: &rng); b.fillNormal(std: 1, generator: &rng)
        BLAS.gemm(m: n, n: n, k: n, a: a.pointer, lda: n, b: b.pointer, ldb: n, c: c.pointer, ldc: n)
        let reps = max(3, Int(2e9 / (2 * pow(Double(n), 3))))
        let t0 = DispatchTime.now().uptimeNanoseconds
        for _ in 0..<reps { BLAS.gemm(m: n, n: n, k: n, a: a.pointer, lda: n, b: b.pointer, ldb: n, c: c.pointer, ldc: n) }
        let dt = Double(DispatchTime.now().uptimeNanoseconds - t0) / 1e9 / Double(reps)
        return 2 * pow(Double(n), 3) / dt / 1e9
    }

    /// The practical GEMM ceiling: the best square sgemm over the sizes `torus bench kernels`
    /// prints, on the BLAS threads set now.
    public static let sgemmSizes = [256, 512, 1024, 2048]
    public static func sgemmCeiling() -> Double { sgemmSizes.map(sgemm(n:)).max() ?? 0 }
}
