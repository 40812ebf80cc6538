import CTorusKernels
import Foundation

/// The machine's measured limits, the yardsticks for achieved throughput: the fp32
/// fused-multiply-add peak (independent FMA chains in registers, the widest vectors the CPU
/// runs) and the memory copy bandwidth (a buffer far larger than the caches).
public enum MachineLimits {
    /// fp32 GFLOP/s of `threads` threads each running the FMA loop for about `seconds`, and the
    /// vector width used (16 with AVX-512, 8 with AVX2).
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
        let n = max(1, threads)
        let flops = UnsafeMutableBufferPointer<Double>.allocate(capacity: n)
        defer { flops.deallocate() }
        let t0 = DispatchTime.now().uptimeNanoseconds
        DispatchQueue.concurrentPerform(iterations: n) { i in
            var w: Int32 = 0, s: Float = 0
            flops[i] = torus_fma_loop(iterations, &w, &s)
        }
        let dt = Double(DispatchTime.now().uptimeNanoseconds - t0) / 1e9
        return (flops.reduce(0, +) / dt / 1e9, Int(width))
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
        var best = 0.0
        for _ in 0..<max(1, repeats) {
            let t0 = DispatchTime.now().uptimeNanoseconds
            DispatchQueue.concurrentPerform(iterations: n) { i in
                memcpy(target + i * share, source + i * share, share)
            }
            let dt = Double(DispatchTime.now().uptimeNanoseconds - t0) / 1e9
            best = max(best, 2 * Double(share * n) / dt / 1e9)
        }
        return best
    }
}
