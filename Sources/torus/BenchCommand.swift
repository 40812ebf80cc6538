import ArgumentParser
import Foundation
import TorusModel
import TorusTensor

struct BenchCommand: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "bench",
        abstract: "Measure performance (prints figures; asserts nothing).",
        subcommands: [BenchKernels.self, BenchTrain.self, BenchAttention.self, BenchLink.self, BenchServe.self, BenchDecode.self, BenchRAG.self])
}

/// Physical fp32 peak of these machines per core: 2.1 GHz x 2 FMA units x 16 lanes x 2 flops.
let peakGFLOPsPerCore = 134.4

struct BenchKernels: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "kernels",
        abstract: "sgemm GFLOP/s and a model forward+backward's achieved GFLOP/s against the machine's peak.")

    @Option(help: "YAML config for the model benchmark (default: d=256, 4 layers, 8 heads, ffn 688, vocab 256).") var config: String?
    @Option(help: "Sequences per step.") var batch: Int = 8
    @Option(help: "Tokens per sequence.") var seqLen: Int = 256
    @Option(help: "Timed repetitions.") var steps: Int = 5

    func run() throws {
        let cores = BLASEnvironment.availableCores
        print("machine: \(cores) cores, OpenBLAS core \(BLAS.coreName), \(BLAS.threads) BLAS threads, OPENBLAS_CORETYPE=\(ProcessInfo.processInfo.environment["OPENBLAS_CORETYPE"] ?? "(unset)")")
        print(String(format: "peak: %.1f GFLOP/s per core, %.1f on %d cores", peakGFLOPsPerCore, peakGFLOPsPerCore * Double(cores), cores))
        let allThreads = BLAS.threads
        for threads in Set([1, allThreads]).sorted() {
            BLAS.threads = threads
            for n in [256, 512, 1024, 2048] {
                let a = Tensor(zeros: [n, n]), b = Tensor(zeros: [n, n]), c = Tensor(zeros: [n, n])
                var rng = SeededGenerator(seed: 1)
                a.fillNormal(std: 1, generator: &rng); b.fillNormal(std: 1, generator: &rng)
                BLAS.gemm(m: n, n: n, k: n, a: a.pointer, lda: n, b: b.pointer, ldb: n, c: c.pointer, ldc: n)
                let reps = max(3, Int(2e9 / (2 * pow(Double(n), 3))))
                let t0 = DispatchTime.now().uptimeNanoseconds
                for _ in 0..<reps { BLAS.gemm(m: n, n: n, k: n, a: a.pointer, lda: n, b: b.pointer, ldb: n, c: c.pointer, ldc: n) }
                let dt = Double(DispatchTime.now().uptimeNanoseconds - t0) / 1e9 / Double(reps)
                let gflops = 2 * pow(Double(n), 3) / dt / 1e9
                print(String(format: "sgemm n=%-5d threads=%d  %7.1f GFLOP/s  (%4.0f%% of %d-core peak)", n, threads, gflops,
                             100 * gflops / (peakGFLOPsPerCore * Double(threads)), threads))
            }
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
        print(String(format: "forward+backward: %.1f ms median of %d, %.0f tokens/s, %.1f GFLOP/s achieved (%.0f%% of %d-core peak)",
                     median * 1e3, steps, Double(batch * seqLen) / median, flops / median / 1e9,
                     100 * flops / median / 1e9 / (peakGFLOPsPerCore * Double(cores)), cores))
    }
}
