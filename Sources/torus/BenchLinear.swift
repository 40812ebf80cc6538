import ArgumentParser
import Foundation
import TorusTensor

/// `y = x W^T` for the few rows of a decoding step: Torus's weights-once kernel against
/// OpenBLAS (sgemm, and one sgemv per row), on the layer shapes of a model.
struct BenchLinear: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "linear",
        abstract: "Linear layers with few rows (decoding): the weights-once kernel against OpenBLAS sgemm and sgemv, and the bfloat16 kernel; GFLOP/s and weight GB/s.")

    @Option(help: "Input features.") var inFeatures: Int = 512
    @Option(help: "Output features.") var outFeatures: Int = 1376
    @Option(help: "Row counts, comma-separated.") var rows: String = "1,2,4,8,16,24,32,48,64,96,128"
    @Option(help: "Seconds per measurement.") var seconds: Double = 0.3
    @Option(help: "MiB of weight matrices cycled through, so that weights come from memory as in a model's step (0: one matrix, kept in cache).")
    var weightsMb: Int = 256

    func run() throws {
        let counts = try rows.split(separator: ",").map { s -> Int in
            guard let n = Int(s.trimmingCharacters(in: .whitespaces)), n > 0 else {
                throw ValidationErrorMessage("--rows: '\(s)' is not a positive row count")
            }
            return n
        }
        guard inFeatures > 0, outFeatures > 0 else { throw ValidationErrorMessage("--in-features and --out-features must be positive") }
        let most = counts.max() ?? 1
        var g = SeededGenerator(seed: 3)
        let matrixBytes = outFeatures * inFeatures * 4
        let copies = max(1, (weightsMb << 20) / matrixBytes)
        let weights = (0..<copies).map { _ in Tensor(zeros: [outFeatures, inFeatures]) }
        let x = Tensor(zeros: [most, inFeatures]), y = Tensor(zeros: [most, outFeatures])
        for w in weights { w.fillNormal(std: 0.05, generator: &g) }
        // bfloat16 copies (`serve --dtype bfloat16`) spanning the same bytes, in one arena on
        // huge pages as a model's are.
        let reducedCount = min(2 * copies, max(1, (weightsMb << 20) / (matrixBytes / 2)))
        let packedCount = (BFloat16Linear.packedCount(outFeatures: outFeatures, inFeatures: inFeatures) + 31) / 32 * 32
        let arena = Tensor(zeros: [reducedCount * packedCount / 2])
        let reduced = (0..<reducedCount).map {
            BFloat16Linear(weight: weights[$0 % copies].pointer, outFeatures: outFeatures, inFeatures: inFeatures, arena: arena, offset: $0 * packedCount)
        }
        var next = 0, nextReduced = 0
        func w() -> UnsafeMutablePointer<Float> { next = (next + 1) % copies; return weights[next].pointer }
        func bf16() -> BFloat16Linear { nextReduced = (nextReduced + 1) % reduced.count; return reduced[nextReduced] }
        x.fillNormal(std: 1, generator: &g)
        print("machine: \(BLASEnvironment.availableCores) cores, OpenBLAS core \(BLAS.coreName), \(BLAS.threads) threads; "
            + "W [\(outFeatures), \(inFeatures)] (\(matrixBytes >> 10) KiB, \(copies) cycled); forward uses sgemv per row up to \(Linear.gemvRows) rows, the kernel up to \(Linear.fewRows), then sgemm")
        print("bfloat16: \(BFloat16Linear.accelerated ? "AVX512-BF16 kernel" : "portable kernel"), \(reduced.count) matrices cycled")
        print("  rows    kernel GFLOP/s (weight GB/s)    sgemm GFLOP/s    sgemv/row GFLOP/s    bfloat16 GFLOP/s (weight GB/s)")
        for n in counts {
            func measure(_ body: () -> Void) -> Double {
                body()
                var calls = 0
                let t0 = DispatchTime.now().uptimeNanoseconds
                var elapsed = 0.0
                while elapsed < seconds {
                    body()
                    calls += 1
                    elapsed = Double(DispatchTime.now().uptimeNanoseconds - t0) / 1e9
                }
                return elapsed / Double(calls)
            }
            let flops = 2.0 * Double(n * inFeatures * outFeatures), bytes = Double(outFeatures * inFeatures * 4)
            let kernel = measure { Linear.forwardFewRows(x: x.pointer, weight: w(), y: y.pointer, rows: n, inFeatures: inFeatures, outFeatures: outFeatures) }
            let sgemm = measure { Linear.forwardBLAS(x: x.pointer, weight: w(), y: y.pointer, rows: n, inFeatures: inFeatures, outFeatures: outFeatures) }
            let gemv = measure {
                Linear.forwardBLAS(x: x.pointer, weight: w(), y: y.pointer, rows: n, inFeatures: inFeatures, outFeatures: outFeatures, perRow: true)
            }
            let half = measure { bf16().forward(x: x.pointer, y: y.pointer, rows: n) }
            print(String(format: "  %4d    %7.1f (%5.1f)                 %7.1f          %7.1f              %7.1f (%5.1f)", n, flops / kernel / 1e9,
                         bytes / kernel / 1e9, flops / sgemm / 1e9, flops / gemv / 1e9, flops / half / 1e9, bytes / 2 / half / 1e9))
        }
    }
}
