import ArgumentParser
import Foundation
import TorusModel
import TorusTensor

struct BenchCommand: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "bench",
        abstract: "Measure performance (prints figures; asserts nothing).",
        subcommands: [BenchKernels.self, BenchSgemmProbe.self, BenchLinear.self, BenchTrain.self, BenchAttention.self, BenchLink.self, BenchServe.self, BenchThroughput.self, BenchDecode.self, BenchRAG.self])
}

struct BenchKernels: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "kernels",
        abstract: "The machine's measured limits (FMA peak, copy bandwidth, sgemm ceiling) and a model forward+backward against them.")

    @Option(help: "YAML config for the model benchmark (default: d=256, 4 layers, 8 heads, ffn 688, vocab 256).") var config: String?
    @Option(help: "Sequences per step.") var batch: Int = 8
    @Option(help: "Tokens per sequence.") var seqLen: Int = 256
    @Option(help: "Timed repetitions.") var steps: Int = 5

    func run() throws {
        BLASCoreCheck.warnOnce()
        let cores = BLASEnvironment.availableCores
        print("machine: \(cores) cores, OpenBLAS core \(BLAS.coreName), \(BLAS.threads) BLAS threads, OPENBLAS_CORETYPE=\(ProcessInfo.processInfo.environment["OPENBLAS_CORETYPE"] ?? "(unset)")")
        let allThreads = BLAS.threads
        let threadCounts = Set([1, allThreads]).sorted()
        var peak: [Int: Double] = [:], ceiling: [Int: Double] = [:]
        for threads in threadCounts {
            let fma = MachineLimits.fmaPeak(threads: threads)
            peak[threads] = fma.gflops
            let copy = MachineLimits.copyBandwidth(threads: threads)
            print(String(format: "limit: fp32 FMA peak %.1f GFLOP/s on %d thread(s) (%d-float vectors, %.1f per thread); copy bandwidth %.1f GB/s (read + write)",
                         fma.gflops, threads, fma.width, fma.gflops / Double(threads), copy))
        }
        for threads in threadCounts {
            BLAS.threads = threads
            for n in MachineLimits.sgemmSizes {
                let gflops = MachineLimits.sgemm(n: n)
                ceiling[threads] = max(ceiling[threads] ?? 0, gflops)
                print(String(format: "sgemm n=%-5d threads=%d  %7.1f GFLOP/s  (%4.0f%% of the measured FMA peak)", n, threads, gflops,
                             100 * gflops / (peak[threads] ?? .infinity)))
            }
            print(String(format: "limit: sgemm ceiling %.1f GFLOP/s on %d thread(s) (best of the sizes above, %.0f%% of the FMA peak)",
                         ceiling[threads] ?? 0, threads, 100 * (ceiling[threads] ?? 0) / (peak[threads] ?? .infinity)))
        }
        BLAS.threads = allThreads

        let modelConfig = try config.map { try RunConfig.load(path: $0).model } ??
            LlamaConfig(hiddenSize: 256, intermediateSize: 688, numHiddenLayers: 4, numAttentionHeads: 8,
                        vocabSize: 256, maxPositionEmbeddings: max(seqLen, 256))
        let model = try LlamaModel.initialized(config: modelConfig, seed: 0)
        var rng = SeededGenerator(seed: 2)
        let tokens = (0..<(batch * seqLen)).map { _ in Int32(rng.next() % UInt64(modelConfig.vocabSize)) }
        let targets = tokens.indices.map { tokens[($0 + 1) % tokens.count] }
        let grads = model.makeGradients()
        try model.loss(tokens: tokens, targets: targets, batch: batch, seqLen: seqLen, gradients: grads) // warm-up
        var times: [Double] = []
        for _ in 0..<steps {
            grads.flat.fill(0)
            let t0 = DispatchTime.now().uptimeNanoseconds
            try model.loss(tokens: tokens, targets: targets, batch: batch, seqLen: seqLen, gradients: grads)
            times.append(Double(DispatchTime.now().uptimeNanoseconds - t0) / 1e9)
        }
        times.sort()
        let median = times[times.count / 2]
        let flops = 3 * modelConfig.forwardFLOPs(tokens: batch * seqLen, seqLen: seqLen)
        let c = modelConfig
        print(String(format: "model d=%d layers=%d heads=%d/%d ffn=%d vocab=%d batch=%dx%d params=%d",
                     c.hiddenSize, c.numHiddenLayers, c.numAttentionHeads, c.numKeyValueHeads, c.intermediateSize,
                     c.vocabSize, batch, seqLen, c.parameterCount))
        let achieved = flops / median / 1e9
        print(String(format: "forward+backward: %.1f ms median of %d, %.0f tokens/s, %.1f GFLOP/s achieved on %d thread(s) (%.0f%% of the FMA peak, %.0f%% of the sgemm ceiling)",
                     median * 1e3, steps, Double(batch * seqLen) / median, achieved, allThreads,
                     100 * achieved / (peak[allThreads] ?? .infinity), 100 * achieved / (ceiling[allThreads] ?? .infinity)))
    }
}

/// One number: single-thread sgemm GFLOP/s at n=512 with the OpenBLAS core this process
/// loaded (how `BLASCoreCheck` compares cores).
struct BenchSgemmProbe: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "sgemm-probe", shouldDisplay: false)

    func run() throws {
        BLAS.threads = 1
        print(String(format: "%.1f", MachineLimits.sgemm(n: 512)))
    }
}
