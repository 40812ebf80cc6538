import ArgumentParser
import Foundation
import TorusComm
import TorusModel
import TorusTensor
import TorusTrain

/// Training throughput (and, under mpirun, how much of the gradient all-reduce is exposed).
struct BenchTrain: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "train",
        abstract: "Tokens/s and achieved GFLOP/s of full training steps (AdamW included); under mpirun also the all-reduce overlap.")

    @Option(help: "YAML config (model and train sections).") var config: String
    @Option(help: "Sequences per step over all ranks (default: train.batch_size).") var batch: Int?
    @Option(help: "Tokens per sequence (default: train.seq_len).") var seqLen: Int?
    @Option(help: "Timed steps after 2 warm-up steps.") var steps: Int = 5
    @Option(help: "All-reduce bucket size in MiB (default: train.bucket_mb).") var bucketMb: Double?
    @Option(help: "Drive MPI progress from a background thread every N microseconds (default: train.progress_us; 0: off).") var progressUs: Int?

    func run() throws {
        BLASCoreCheck.warnOnce()
        let world = try MPIRuntime.world()
        let cfg = try RunConfig.load(path: config)
        let b = batch ?? cfg.train.batchSize, t = seqLen ?? cfg.train.seqLen
        var mc = cfg.model
        mc.maxPositionEmbeddings = max(mc.maxPositionEmbeddings, t)
        let model = try LlamaModel.initialized(config: mc, seed: 0)
        var g = SeededGenerator(seed: 1)
        let tokens = (0..<(b * (t + 1) * 4 + 1)).map { _ in Int32(g.next() % UInt64(mc.vocabSize)) }
        var options = TrainOptions(steps: steps + 2, globalSequences: b, microBatches: 1, seqLen: t,
                                   schedule: LearningRateSchedule(peak: 1e-4, minimum: 1e-4, warmupSteps: 0, totalSteps: steps + 2),
                                   checkWeightsEvery: 0, bucketBytes: Int((bucketMb ?? cfg.train.bucketMB) * 1_048_576))
        let progress = progressUs ?? cfg.train.progressUs
        options.progressMicroseconds = progress > 0 ? progress : nil
        let trainer = try Trainer(model: model, tokens: tokens, options: options, comm: world, outDir: nil)
        var reports: [StepReport] = []
        var exposed: [Double] = []
        for i in 0..<(steps + 2) {
            let r = try trainer.trainStep()
            // Ranks on one host share the monotonic clock: communication is exposed only from the
            // moment the last rank finished its backward until this rank's wait ended.
            let wait = trainer.lastReduceWait
            let lastBackwardEnd = try world.allReduce([Double(wait.start)], op: .max)[0]
            let mine = max(0, (Double(wait.end) - lastBackwardEnd) / 1e9)
            let worst = try world.allReduce([mine], op: .max)[0]
            if i >= 2 { reports.append(r); exposed.append(worst) }
        }
        let blocking = try GradientReducer(comm: world, gradients: model.makeGradients(), bucketBytes: options.bucketBytes)
            .measureBlockingReduce(on: model.makeGradients())
        guard world.rank == 0 else { return }
        // The ceiling a step is measured against: this rank's best sgemm on its BLAS threads.
        let ceiling = MachineLimits.sgemmCeiling()
        func median(_ v: [Double]) -> Double { let s = v.sorted(); return s[s.count / 2] }
        let c = mc
        print(String(format: "model d=%d layers=%d heads=%d/%d ffn=%d vocab=%d params=%d; batch %d x %d tokens over %d rank(s), BLAS threads %d",
                     c.hiddenSize, c.numHiddenLayers, c.numAttentionHeads, c.numKeyValueHeads, c.intermediateSize, c.vocabSize,
                     c.parameterCount, b, t, world.size, BLAS.threads)
              + (progress > 0 ? ", progress thread every \(progress) us" : ", no progress thread"))
        let achieved = median(reports.map(\.gflops))
        print(String(format: "train step (forward, backward, all-reduce, AdamW): %.1f ms median of %d, %.0f tokens/s, %.1f GFLOP/s = %.2f of the sgemm ceiling of %d rank(s) (%.1f GFLOP/s each, best square sgemm on %d BLAS threads)",
                     median(reports.map(\.stepSeconds)) * 1e3, reports.count, median(reports.map(\.tokensPerSecond)),
                     achieved, achieved / (ceiling * Double(world.size)), world.size, ceiling, BLAS.threads))
        if world.size > 1 {
            let exposedMedian = median(exposed), waitMedian = median(reports.map(\.allReduceWaitSeconds))
            print(String(format: "gradient all-reduce: %.1f MB in %d buckets; blocking cost %.1f ms; exposed after the last rank's backward %.2f ms (median over steps, max over ranks); overlap %.0f%%; rank 0 waited %.1f ms (includes waiting for slower ranks)",
                         Double(model.parameters.count * 4) / 1e6, trainer.bucketCount, blocking * 1e3, exposedMedian * 1e3,
                         blocking > 0 ? 100 * max(0, 1 - exposedMedian / blocking) : 0, waitMedian * 1e3))
        }
    }
}




