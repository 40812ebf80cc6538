import ArgumentParser
import Foundation
import TorusComm
import TorusModel
import TorusTrain

struct TrainCommand: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "train",
        abstract: "Train a LLaMA model (data-parallel across the ranks of mpirun).")

    @Option(help: "YAML config (model, train, data sections).") var config: String
    @Option(help: "Output directory (overrides train.out).") var out: String?
    @Option(help: "Optimizer steps (overrides train.steps).") var steps: Int?
    @Option(help: "Model directory whose weights training starts from (overrides train.init_from).") var initFrom: String?
    @Flag(help: "Continue from the newest complete checkpoint in the output directory.") var resume = false
    @Option(help: "Stop (with a checkpoint) after this step, as if interrupted; the schedule still spans all steps.") var stopAfter: Int?

    func run() throws {
        BLASCoreCheck.warnOnce()
        let world = try MPIRuntime.world()
        do {
            try train(world: world)
        } catch {
            // One rank failing must end the job, not leave the others waiting in a collective.
            warn("torus train: rank \(world.rank) of \(world.size): \(error)")
            if world.size > 1 { world.abort(code: 1) }
            throw ExitCode.failure
        }
    }

    func train(world: Communicator) throws {
        var cfg = try RunConfig.load(path: config)

        if let steps { cfg.train.steps = steps }
        if let out { cfg.train.out = out }
        if let initFrom { cfg.train.initFrom = initFrom }
        let t = cfg.train
        let options = cfg.trainOptions()
        // A pipeline stage holds only its own layers (and their gradients and AdamW state).
        let part = try Trainer.modelPart(config: cfg.model, options: options, worldSize: world.size, rank: world.rank)
        let model: LlamaModel
        if let from = t.initFrom {
            guard try HFCheckpoint.loadConfig(directory: from) == cfg.model else {
                throw ConfigError(file: config, message: "train.init_from \(from) has a different model config than 'model'")
            }
            model = try HFCheckpoint.load(directory: from, part: part)
        } else {
            model = try LlamaModel.initialized(config: cfg.model, seed: cfg.seed, part: part)
        }
        let tokenizer = try corpusTokenizer(cfg, vocab: model.config.vocabSize)
        var mask: [Bool]?
        let tokens: [Int32]
        if cfg.data.train == "synth_rag" {
            let corpus = cfg.data.ragCorpus(seed: cfg.seed)
            let windows = corpus.trainingTokenWindows(count: cfg.data.synthExamples, split: "train", window: t.seqLen, tokenizer: tokenizer)
            tokens = windows.tokens
            if cfg.data.ragLoss == "questions" { mask = windows.questions }
        } else if cfg.data.train == "synth_drill" {
            let drill = BindingDrill(stages: cfg.data.drill, seed: cfg.seed, pairs: cfg.data.drillPairs, kinds: cfg.data.drillKinds, friends: cfg.data.drillFriends)
            let windows = drill.trainingTokenWindows(count: cfg.data.synthExamples, window: t.seqLen, tokenizer: tokenizer)
            guard !windows.tokens.isEmpty else {
                throw ConfigError(file: config, message: "no drill example of \(cfg.data.drill.map(\.rawValue)) fits train.seq_len \(t.seqLen)")
            }
            (tokens, mask) = (windows.tokens, windows.questions)
        } else {
            tokens = try loadTokens(cfg.data.train, cfg: cfg, split: "train", vocab: model.config.vocabSize, tokenizer: tokenizer)
        }
        let trainer = try Trainer(model: model, tokens: tokens, options: options, comm: world, outDir: t.out)
        trainer.targetMask = mask
        trainer.tokenizerFile = cfg.data.tokenizer
        if let spec = ProcessInfo.processInfo.environment["TORUS_FAULT_KILL"] {
            let parts = spec.split(separator: ":").compactMap { Int($0) }
            if parts.count == 2 { trainer.faultInjection = (parts[0], parts[1]) }
        }
        trainer.faultNaNStep = ProcessInfo.processInfo.environment["TORUS_FAULT_NAN"].flatMap { Int($0) }
        try trainer.synchronizeWeights()
        let start = resume ? try trainer.resume() : 0
        let rank0 = world.rank == 0
        if rank0 {
            try FileManager.default.createDirectory(atPath: t.out, withIntermediateDirectories: true)
            let sp = (cfg.sequenceParallel.map { ", sequence parallel \($0.size) (\($0.method), \($0.layout))" } ?? "")
                + (trainer.stages > 1 ? ", \(trainer.stages) pipeline stages (\(["1f1b": "1F1B", "interleaved": "interleaved 1F1B, \(cfg.pipelineVirtualStages) virtual stages each"][cfg.pipelineSchedule] ?? "GPipe"), \(t.microBatches) micro-batches)" : "")
            print("train: \(world.size) rank(s) = \(trainer.dataRanks) data-parallel replica(s)\(sp), \(model.config.parameterCount) parameters, \(tokens.count) training tokens, global batch \(t.batchSize) x \(t.microBatches) x \(t.seqLen) tokens, \(t.steps) steps" + (start > 0 ? ", resuming after step \(start)" : ""))
            if let sharded = trainer.sharded {
                let full = model.parameters.count
                print(String(format: "ZeRO-1: AdamW moments and update sharded over the %d ranks of each stage: rank 0 keeps %d of %d values (%.2f MB of moments instead of %.2f MB)",
                             sharded.comm.size, sharded.shardCount, full, Double(sharded.shardCount * 8) / 1e6, Double(full * 8) / 1e6))
            }
            if trainer.stages > 1 {
                for s in trainer.plan.stages {
                    print("  stage \(s.index): \(trainer.plan.part(stage: s.index, of: cfg.model)), \(s.parameters) parameters (weights, gradients and AdamW state held by its ranks only)")
                }
            }
        }
        let metrics = rank0 ? try MetricsLog(path: t.out + "/metrics.jsonl", append: start > 0, keepThrough: start) : nil
        // Held-out accuracy during training, one line per evaluation (steps stay alone in metrics.jsonl).
        let evaluations = rank0 && cfg.data.heldout != nil
            ? try MetricsLog(path: t.out + "/evaluation.jsonl", append: start > 0, keepThrough: start) : nil
        let last = min(t.steps, stopAfter ?? t.steps)
        while trainer.step < last {
            let report = try trainer.trainStep()
            if rank0 {
                try metrics?.write(report)
                if report.step % t.logEvery == 0 || report.step == t.steps || report.step == start + 1 {
                    print(String(format: "step %5d/%d  loss %.4f  lr %.2e  |grad| %.3f  %6.0f tok/s  %6.1f GFLOP/s  allreduce wait %5.1f ms  ETA %@",
                                 report.step, t.steps, report.loss, report.lr, report.gradNorm, report.tokensPerSecond,
                                 report.gflops, report.allReduceWaitSeconds * 1e3, formatDuration(report.etaSeconds)))
                }
            }
            if t.evalEvery > 0 && trainer.step % t.evalEvery == 0 && trainer.step < t.steps && cfg.data.heldout != nil
                && trainer.stages == 1 {
                // Every rank answers a share of the questions (the whole model is on each).
                let scores = try accuracies(model: model, cfg: cfg, tokenizer: tokenizer, world: world)
                if rank0, !scores.isEmpty {
                    let tokensSeen = trainer.step * t.batchSize * t.microBatches * t.seqLen
                    print("step \(trainer.step), \(tokensSeen) tokens: " + scores.map(\.line).filter { !$0.isEmpty }.joined(separator: "; "))
                    try evaluations?.writeEvaluation(step: trainer.step, tokens: tokensSeen, scores: scores)
                    try TrainingCurve.write(out: t.out, tokensPerStep: t.batchSize * t.microBatches * t.seqLen)
                }
            }
            if t.checkpointEvery > 0 && trainer.step % t.checkpointEvery == 0 && trainer.step < t.steps {
                try trainer.checkpoint()
                if rank0 { print("checkpoint: \(trainer.lastCheckpoint ?? "")") }
            }
        }
        try trainer.checkWeightsAgree()
        try reportMemory(trainer: trainer, world: world)
        try trainer.checkpoint()
        if trainer.step < t.steps {
            if rank0 { print("stopped after step \(trainer.step) of \(t.steps); continue with --resume. checkpoint: \(trainer.lastCheckpoint ?? "")") }
            try world.barrier()
            return
        }
        let modelDir = t.out + "/model"
        try trainer.saveModel(to: modelDir)
        if rank0 {
            // Evaluation needs every layer: a pipeline stage reads the whole model back.
            let model = model.part.isWhole(model.config) ? model : try HFCheckpoint.load(directory: modelDir)
            print("checkpoint: \(trainer.lastCheckpoint ?? "")")
            print("model: \(modelDir)")
            print("metrics: \(t.out)/metrics.jsonl")
            if let heldout = cfg.data.heldout {
                let held = try loadTokens(heldout, cfg: cfg, split: "heldout", vocab: model.config.vocabSize, tokenizer: tokenizer)
                let loss = try model.windowedLoss(tokens: held, seqLen: t.seqLen, batch: 4).meanLoss
                print(String(format: "heldout: loss %.4f, perplexity %.3f over %d tokens", loss, exp(loss), held.count))
                if trainer.stages > 1 {
                    for score in try accuracies(model: model, cfg: cfg, tokenizer: tokenizer, world: nil) where !score.line.isEmpty { print(score.line) }
                }
            }
        }
        if cfg.data.heldout != nil && trainer.stages == 1 {
            // Every rank holds the whole model and answers a share of the questions.
            let scores = try accuracies(model: model, cfg: cfg, tokenizer: tokenizer, world: world)
            if rank0 {
                for score in scores where !score.line.isEmpty { print(score.line) }
                let perStep = t.batchSize * t.microBatches * t.seqLen
                if !scores.isEmpty { try evaluations?.writeEvaluation(step: trainer.step, tokens: trainer.step * perStep, scores: scores) }
                try TrainingCurve.write(out: t.out, tokensPerStep: perStep)
                print("curve (loss and held-out accuracy against tokens seen): \(t.out)/curve.svg")
            }
        }
        try world.barrier()
    }

    /// Held-out answer accuracy for the built-in corpora (none for other data). With `world`,
    /// rank r answers questions r, r+P, ... and the counts are summed; without it the calling
    /// rank answers all.
    func accuracies(model: LlamaModel, cfg: RunConfig, tokenizer: any TextTokenizer, world: Communicator?) throws -> [AccuracyScore] {
        let answerRoom = QAEvaluation.answerTokens(rag: cfg.data.heldout == "synth_rag")
        let limit = model.config.maxPositionEmbeddings - answerRoom
        let (rank, size) = (world?.rank ?? 0, world?.size ?? 1)
        func evaluate(_ examples: [QAExample]) throws -> (correct: Int, total: Int, twoHopCorrect: Int, twoHopTotal: Int) {
            let mine = examples.enumerated().filter { $0.offset % size == rank }.map(\.element)
            let r = try QAEvaluation.evaluate(model: model, examples: mine, maxAnswerTokens: answerRoom, tokenizer: tokenizer)
            if rank == 0, let w = r.firstWrong, ProcessInfo.processInfo.environment["TORUS_SHOW_WRONG"] != nil {
                print("  wrong: '\(w.answer)' (expected '\(w.expected)')")
            }
            var counts = [Double(r.correct), Double(r.total), Double(r.twoHopCorrect), Double(r.twoHopTotal)]
            if let world { counts = try world.allReduce(counts) }
            return (Int(counts[0]), Int(counts[1]), Int(counts[2]), Int(counts[3]))
        }
        func percent(_ a: Int, _ b: Int) -> Double { b == 0 ? 0 : 100 * Double(a) / Double(b) }
        switch cfg.data.heldout {
        case "synth_rag":
            let corpus = cfg.data.ragCorpus(seed: cfg.seed)
            let examples = (0..<Self.ragQuestions).map { corpus.example($0, split: "heldout") }
                .filter { tokenizer.encode($0.prompt).count <= limit }
            return try ["single", "friend", "previous"].compactMap { kind in
                let subset = examples.filter { $0.kind == kind }.map(\.qa)
                guard !subset.isEmpty else { return nil }
                let r = try evaluate(subset)
                return AccuracyScore(name: kind, correct: r.correct, total: r.total,
                                     line: String(format: "heldout RAG QA (%@): answer accuracy %.1f%% (%d/%d)", kind, percent(r.correct, r.total), r.correct, r.total))
            }
        case "synth":
            let corpus = SyntheticCorpus(seed: cfg.seed)
            let examples = (0..<40).map { corpus.example($0, split: "heldout") }.filter { $0.prompt.utf8.count <= limit }
            guard !examples.isEmpty else {
                print("heldout QA: skipped (questions are longer than max_position_embeddings \(model.config.maxPositionEmbeddings))")
                return []
            }
            let r = try evaluate(examples)
            return [AccuracyScore(name: "all", correct: r.correct, total: r.total,
                                  line: String(format: "heldout QA: answer accuracy %.1f%% (%d/%d), two-hop %.1f%% (%d/%d)", percent(r.correct, r.total),
                                               r.correct, r.total, percent(r.twoHopCorrect, r.twoHopTotal), r.twoHopCorrect, r.twoHopTotal)),
                    AccuracyScore(name: "two-hop", correct: r.twoHopCorrect, total: r.twoHopTotal, line: "")]
        default:
            return []
        }
    }

    /// Held-out RAG questions asked (each kind counted on its own).
    static let ragQuestions = 100

    /// Prints every stage's peak resident memory (whole process) beside the plan's estimate.
    func reportMemory(trainer: Trainer, world: Communicator) throws {
        var usage = rusage()
        getrusage(RUSAGE_SELF.rawValue, &usage)
        var peaks = [Double](repeating: 0, count: world.size)
        peaks[world.rank] = Double(usage.ru_maxrss) / 1024   // ru_maxrss is in KiB on Linux
        peaks = try world.allReduce(peaks)
        guard world.rank == 0 else { return }
        let ranksPerStage = world.size / trainer.stages
        let lines = (0..<trainer.stages).map { s -> String in
            let ranks = peaks[(s * ranksPerStage)..<((s + 1) * ranksPerStage)]
            let estimate = trainer.plan.memoryPerRankBytes[s * ranksPerStage] / 1_048_576
            return String(format: "%@%.0f-%.0f MiB (plan: %d MiB + runtime)", trainer.stages > 1 ? "stage \(s) " : "",
                          ranks.min() ?? 0, ranks.max() ?? 0, estimate)
        }
        print("peak resident memory per rank: " + lines.joined(separator: "; "))
    }

    /// The tokenizer of the built-in corpora: `data.tokenizer`, else bytes.
    func corpusTokenizer(_ cfg: RunConfig, vocab: Int) throws -> any TextTokenizer {
        guard let path = cfg.data.tokenizer else { return ByteTokenizer() }
        let t = try TokenizerJSON.load(path: path, modelVocabulary: vocab)
        guard t.vocabularySize <= vocab else {
            throw ConfigError(file: path, message: "the tokenizer has \(t.vocabularySize) tokens but model.vocab_size is \(vocab)")
        }
        return t
    }

    /// Tokens of a data source: the built-in QA corpus, the RAG corpus's held-out text (its
    /// training windows are built by `RAGCorpus.trainingTokenWindows`), or a file.
    func loadTokens(_ source: String, cfg: RunConfig, split: String, vocab: Int, tokenizer: any TextTokenizer) throws -> [Int32] {
        if source == "synth" {
            let count = split == "train" ? cfg.data.synthExamples : 200
            return tokenizer.encode(SyntheticCorpus(seed: cfg.seed).text(count: count, split: split))
        }
        if source == "synth_rag" {
            let corpus = cfg.data.ragCorpus(seed: cfg.seed)
            return tokenizer.encode(corpus.text(count: 40, split: split))
        }
        return try readTokens(path: source, vocab: vocab)
    }
}

func formatDuration(_ s: Double) -> String {
    let t = Int(s.rounded())
    return t >= 3600 ? "\(t / 3600)h\(t % 3600 / 60)m" : t >= 60 ? "\(t / 60)m\(t % 60)s" : "\(t)s"
}

/// Appends one JSON object per step.
final class MetricsLog {
    let handle: FileHandle
    let encoder = JSONEncoder()

    /// Opens the metrics file; when resuming after `keepThrough`, drops lines of later steps
    /// (written before an interruption) so every step appears once.
    init(path: String, append: Bool, keepThrough: Int = 0) throws {
        if append, let text = try? String(contentsOfFile: path, encoding: .utf8) {
            struct StepOnly: Decodable { let step: Int }
            let kept = text.split(separator: "\n").filter { line in
                (try? JSONDecoder().decode(StepOnly.self, from: Data(line.utf8)).step).map { $0 <= keepThrough } ?? false
            }
            try (kept.map { $0 + "\n" }.joined()).write(toFile: path, atomically: true, encoding: .utf8)
        } else {
            FileManager.default.createFile(atPath: path, contents: nil)
        }
        guard let h = FileHandle(forWritingAtPath: path) else { throw ValidationErrorMessage("cannot write metrics file \(path)") }
        handle = h
        handle.seekToEndOfFile()
        encoder.keyEncodingStrategy = .convertToSnakeCase
        encoder.outputFormatting = [.sortedKeys]
    }

    func write(_ report: StepReport) throws {
        handle.write(try encoder.encode(report) + Data("\n".utf8))
    }

    /// One line `{"step":..,"tokens":..,"accuracy":{"single":{"correct":..,"total":..},..}}`.
    func writeEvaluation(step: Int, tokens: Int, scores: [AccuracyScore]) throws {
        handle.write(try encoder.encode(EvaluationRecord(step: step, tokens: tokens, scores: scores)) + Data("\n".utf8))
    }
}

extension RunConfig {
    /// The trainer's options for this config (what `torus train` runs and `torus plan` plans).
    func trainOptions() -> TrainOptions {
        let t = train
        var options = TrainOptions(
            steps: t.steps, globalSequences: t.batchSize, microBatches: t.microBatches, seqLen: t.seqLen,
            schedule: LearningRateSchedule(peak: t.lr, minimum: t.minLR, warmupSteps: t.warmupSteps, totalSteps: t.steps),
            adamw: AdamWOptions(beta1: Float(t.beta1), beta2: Float(t.beta2), eps: Float(t.eps), weightDecay: Float(t.weightDecay)),
            clipNorm: t.clipNorm, seed: seed, checkWeightsEvery: t.checkWeightsEvery, bucketBytes: Int(t.bucketMB * 1_048_576))
        options.sequenceParallel = sequenceParallel
        options.progressMicroseconds = t.progressUs > 0 ? t.progressUs : nil
        options.zero = t.zero > 0 ? t.zero : nil
        // Defaults stay nil, so checkpoints of runs without them compare equal on resume.
        options.pipelineStages = pipelineParallel > 1 ? pipelineParallel : nil
        options.pipelineSchedule = pipelineParallel > 1 || pipelineSchedule != "gpipe" ? pipelineSchedule : nil
        options.pipelineVirtualStages = pipelineVirtualStages > 1 ? pipelineVirtualStages : nil
        return options
    }
}
