import Foundation
import Testing
import TorusModel

/// Training under real Open MPI: data parallelism against one rank, exact resume, failures.
@Suite(.serialized) struct TrainingTests {
    static func workDir(_ name: String) -> String {
        let d = NSTemporaryDirectory() + "torus-train-\(getpid())-\(name)-\(UInt32.random(in: 0...UInt32.max))"
        try? FileManager.default.createDirectory(atPath: d, withIntermediateDirectories: true)
        return d
    }

    static func config(in dir: String, steps: Int, checkpointEvery: Int = 0, extraData: String = "") throws -> String {
        let path = dir + "/train.yaml"
        try """
        \(TestYAML.model())
        seed: 5
        train:
          steps: \(steps)
          batch_size: 4
          micro_batches: 2
          seq_len: 32
          lr: 1.0e-2
          min_lr: 1.0e-3
          warmup_steps: 2
          log_every: 1
          checkpoint_every: \(checkpointEvery)
          check_weights_every: 2
          bucket_mb: 0.01
        data:
          synth_examples: 300
          heldout: synth
        \(extraData)
        """.write(toFile: path, atomically: true, encoding: .utf8)
        return path
    }

    struct MetricsLine: Decodable {
        let step: Int
        let loss: Float
        let grad_norm: Double
    }

    /// The stated tolerance for a parallel run against one rank: fp32 sums in another order
    /// (partial gradients, then all-reduce) differ by about 1e-7 relative per step, amplified a
    /// little by AdamW over a few steps; observed differences are about 1e-6. We allow 1e-4 on
    /// each loss, 1e-4 relative on each step's gradient norm (before clipping: it catches a
    /// wrong averaging factor, which AdamW's update and the weights would hide) and 2e-4
    /// (absolute, weights of order 0.02-1) on every weight.
    static func expectMatches(_ out: String, base: [MetricsLine], baseWeights: [Float], _ label: String) throws {
        let run = try lines(out)
        let weights = try HFCheckpoint.load(directory: out + "/model").parameters.flat.array
        let lossErr = zip(run, base).map { abs($0.loss - $1.loss) }.max() ?? .infinity
        let normErr = zip(run, base).map { abs($0.grad_norm - $1.grad_norm) / max($1.grad_norm, 1e-12) }.max() ?? .infinity
        let weightErr = zip(weights, baseWeights).map { abs($0 - $1) }.max() ?? .infinity
        #expect(run.count == base.count, "\(label): \(run.count) steps, expected \(base.count)")
        #expect(weights.count == baseWeights.count, "\(label): \(weights.count) weights, expected \(baseWeights.count)")
        #expect(lossErr < 1e-4, "\(label): loss differs by \(lossErr): \(run.map(\.loss)) vs \(base.map(\.loss))")
        #expect(normErr < 1e-4, "\(label): gradient norm differs by \(normErr) relative")
        #expect(weightErr < 2e-4, "\(label): weights differ by \(weightErr)")
        print("\(label): max loss error \(lossErr), gradient norm \(normErr) relative, weights \(weightErr)")
    }

    static func lines(_ out: String) throws -> [MetricsLine] {
        let text = try String(contentsOfFile: out + "/metrics.jsonl", encoding: .utf8)
        return try text.split(separator: "\n").map { try JSONDecoder().decode(MetricsLine.self, from: Data($0.utf8)) }
    }

    static func losses(_ out: String) throws -> [Float] { try lines(out).map(\.loss) }

    func train(ranks: Int, config: String, out: String, extra: [String] = []) throws -> TorusBinary.Result {
        let r = try TorusBinary.mpirun(ranks: ranks, ["train", "--config", config, "--out", out] + extra, timeout: 240)
        #expect(!r.timedOut, "training on \(ranks) ranks timed out:\n\(r.output)")
        return r
    }

    /// `train.eval_every` on the RAG corpus in the default BPE tokenizer: every 2 steps the 2
    /// ranks answer shares of the held-out questions; each evaluation is a line of
    /// evaluation.jsonl with every question kind counted over all ranks, and curve.svg draws it;
    /// checkpoints and the model carry the configured tokenizer.
    @Test func ragEvaluationDuringTrainingCountsEveryQuestion() throws {
        let dir = Self.workDir("rag-eval")
        let tokenizer = ClientPython.repository + "/configs/rag-tokenizer.json"
        try """
        \(TestYAML.model(vocab: 1408, maxPositions: 512))
        seed: 3
        train:
          steps: 4
          batch_size: 2
          seq_len: 256
          warmup_steps: 1
          log_every: 1
          eval_every: 2
          checkpoint_every: 2
        data:
          train: synth_rag
          heldout: synth_rag
          synth_examples: 40
          rag_documents: [1, 2]
          rag_filler: false
          tokenizer: \(tokenizer)
        """.write(toFile: dir + "/rag.yaml", atomically: true, encoding: .utf8)
        let r = try train(ranks: 2, config: dir + "/rag.yaml", out: dir + "/out")
        try #require(r.status == 0, "\(r.output)")
        #expect(r.stdout.contains("step 2, 1024 tokens: heldout RAG QA (single)"), "\(r.stdout)")
        struct Evaluation: Decodable { struct Count: Decodable { let correct: Int, total: Int }; let step: Int; let tokens: Int; let accuracy: [String: Count] }
        let lines = try String(contentsOfFile: dir + "/out/evaluation.jsonl", encoding: .utf8).split(separator: "\n")
        let evals = try lines.map { try JSONDecoder().decode(Evaluation.self, from: Data($0.utf8)) }
        #expect(evals.map(\.step) == [2, 4] && evals.map(\.tokens) == [1024, 2048])
        for e in evals {
            #expect(Set(e.accuracy.keys) == ["single", "friend", "previous"], "\(e.accuracy.keys)")
            #expect(e.accuracy.values.map(\.total).reduce(0, +) == 100, "every held-out question answered once: \(e.accuracy)")
        }
        #expect(try String(contentsOfFile: dir + "/out/curve.svg", encoding: .utf8).contains("single ("))
        // Every model directory the run writes (checkpoints too) reads the tokens it was trained on.
        let trained = FileManager.default.contents(atPath: tokenizer)
        for model in ["model", "checkpoints/step-000002/model", "checkpoints/step-000004/model"] {
            #expect(FileManager.default.contents(atPath: dir + "/out/\(model)/tokenizer.json") == trained, "\(model)/tokenizer.json is not \(tokenizer)")
        }
    }

    /// `data.train: synth_drill` on 2 ranks, a second stage from the first one's weights, and
    /// `torus curve` over both (tokens counted on from the first); bad drill settings name the key.
    @Test func bindingDrillStagesChainAndDrawOneCurve() throws {
        let dir = Self.workDir("drill")
        let tokenizer = ClientPython.repository + "/configs/rag-tokenizer.json"
        func config(_ name: String, stage: String, seqLen: Int, initFrom: String? = nil) throws -> String {
            let path = dir + "/\(name).yaml"
            try """
            \(TestYAML.model(vocab: 1408, maxPositions: 128))
            seed: 3
            train:
              steps: 3
              batch_size: 4
              seq_len: \(seqLen)
              warmup_steps: 1
              log_every: 1
              out: \(dir)/\(name)
            \(initFrom.map { "  init_from: \($0)" } ?? "")
            data:
              train: synth_drill
              drill: \(stage)
              drill_kinds: [1, 2]
              heldout: none
              synth_examples: 40
              tokenizer: \(tokenizer)
            """.write(toFile: path, atomically: true, encoding: .utf8)
            return path
        }
        let first = try TorusBinary.mpirun(ranks: 2, ["train", "--config", try config("pairs", stage: "pairs", seqLen: 16)], timeout: 240)
        try #require(first.status == 0, "\(first.output)")
        let second = try TorusBinary.mpirun(ranks: 2, ["train", "--config", try config("questions", stage: "[statements, questions]", seqLen: 96,
                                                                                      initFrom: dir + "/pairs/model")], timeout: 240)
        try #require(second.status == 0, "\(second.output)")
        #expect(second.stdout.contains("global batch 4 x 1 x 96 tokens"), "\(second.stdout)")
        let metrics = try String(contentsOfFile: dir + "/questions/metrics.jsonl", encoding: .utf8)
        #expect(metrics.split(separator: "\n").count == 3 && metrics.contains("\"tokens\":384"), "\(metrics)")
        // --init-from overrides train.init_from: a third stage (chains) from the second's weights.
        let chains = try config("chains", stage: "chains", seqLen: 128)
        let third = try TorusBinary.mpirun(ranks: 2, ["train", "--config", chains, "--init-from", dir + "/questions/model"], timeout: 240)
        #expect(third.status == 0 && third.stdout.contains("global batch 4 x 1 x 128 tokens"), "\(third.output)")
        let nowhere = try train(ranks: 1, config: chains, out: dir + "/chains-nowhere", extra: ["--init-from", dir + "/nowhere/model"])
        #expect(nowhere.status != 0 && nowhere.stderr.contains("nowhere/model"), "\(nowhere.output)")
        let curve = try TorusBinary.torus(["curve", dir + "/pairs", dir + "/questions", "--out", dir + "/curve.svg"])
        #expect(curve.status == 0, "\(curve.output)")
        let svg = try String(contentsOfFile: dir + "/curve.svg", encoding: .utf8)
        #expect(svg.contains(">pairs<") && svg.contains(">questions<"), "both runs' losses are drawn")
        let missing = try TorusBinary.torus(["curve", dir + "/nope", "--out", dir + "/x.svg"])
        #expect(missing.status != 0 && missing.stderr.contains("nope/metrics.jsonl holds no training steps"), "\(missing.output)")

        let bad = try config("bad", stage: "[pairs, recall]", seqLen: 16)
        let r1 = try train(ranks: 1, config: bad, out: dir + "/bad")
        #expect(r1.status != 0 && r1.stderr.contains("'data.drill' names 'recall'; known: pairs, one_word"), "\(r1.output)")
        let short = try config("short", stage: "questions", seqLen: 8)
        let r2 = try train(ranks: 1, config: short, out: dir + "/short")
        #expect(r2.status != 0 && r2.stderr.contains("fits train.seq_len 8"), "\(r2.output)")
    }

    /// The same global batch on 1, 2 and 4 ranks gives the same losses and weights. Tolerance:
    /// fp32 sums in a different order (per-rank partial gradients then all-reduce) differ by
    /// about 1e-7 relative per step; over 6 AdamW steps we allow 2e-4 on the loss and 2e-3
    /// (absolute, weights of order 0.02-1) on every weight.
    @Test func dataParallelMatchesOneRank() throws {
        let dir = Self.workDir("dp")
        let config = try Self.config(in: dir, steps: 6)
        for ranks in [1, 2, 4] {
            let r = try train(ranks: ranks, config: config, out: dir + "/np\(ranks)")
            try #require(r.status == 0, "np=\(ranks):\n\(r.output)")
        }
        let base = try Self.lines(dir + "/np1")
        let baseWeights = try HFCheckpoint.load(directory: dir + "/np1/model").parameters.flat.array
        #expect(base.count == 6)
        #expect((base.last?.loss ?? .infinity) < (base.first?.loss ?? 0), "loss did not fall: \(base.map(\.loss))")
        for ranks in [2, 4] {
            try Self.expectMatches(dir + "/np\(ranks)", base: base, baseWeights: baseWeights, "np=\(ranks)")
        }
        // The curve is drawn from metrics.jsonl, which keeps one line per step (Self.lines decodes
        // every line as a step); this model's context is too short for held-out questions, so no
        // evaluation is written.
        for ranks in [1, 2, 4] {
            #expect(try String(contentsOfFile: dir + "/np\(ranks)/curve.svg", encoding: .utf8).contains("<polyline"))
            let evaluations = (try? String(contentsOfFile: dir + "/np\(ranks)/evaluation.jsonl", encoding: .utf8)) ?? ""
            #expect(evaluations.isEmpty, "\(evaluations)")
        }
        // A background progress thread moves the same data: same results.
        let threaded = dir + "/progress.yaml"
        try (try String(contentsOfFile: config, encoding: .utf8)).replacingOccurrences(of: "  bucket_mb: 0.01", with: "  bucket_mb: 0.01\n  progress_us: 50")
            .write(toFile: threaded, atomically: true, encoding: .utf8)
        let r = try train(ranks: 2, config: threaded, out: dir + "/progress")
        try #require(r.status == 0, "progress thread:\n\(r.output)")
        try Self.expectMatches(dir + "/progress", base: base, baseWeights: baseWeights, "np=2 with a progress thread")
    }

    /// Sequence parallelism (alone and with data parallelism) gives the same losses and
    /// weights as one rank; same tolerance as above.
    @Test func sequenceParallelMatchesOneRank() throws {
        let dir = Self.workDir("sp")
        let baseConfig = try Self.config(in: dir, steps: 4)
        let single = dir + "/np1"
        try #require(try train(ranks: 1, config: baseConfig, out: single).status == 0)
        let base = try Self.lines(single)
        let baseWeights = try HFCheckpoint.load(directory: single + "/model").parameters.flat.array
        for (ranks, size, method, layout) in [(2, 2, "ring", "zigzag"), (2, 2, "tokenring", "contiguous"),
                                              (4, 2, "tokenring", "zigzag"), (4, 4, "ring", "contiguous")] {
            let yaml = try String(contentsOfFile: baseConfig, encoding: .utf8)
                + "\nsequence_parallel:\n  size: \(size)\n  method: \(method)\n  layout: \(layout)\n"
            let path = dir + "/sp-\(ranks)-\(size)-\(method)-\(layout).yaml"
            try yaml.write(toFile: path, atomically: true, encoding: .utf8)
            let out = dir + "/o-\(ranks)-\(size)-\(method)-\(layout)"
            let r = try train(ranks: ranks, config: path, out: out)
            try #require(r.status == 0, "\(path):\n\(r.output)")
            try Self.expectMatches(out, base: base, baseWeights: baseWeights, "np=\(ranks) sp=\(size) \(method) \(layout)")
        }
        // A sequence the layout cannot split is refused before training starts.
        let bad = try String(contentsOfFile: baseConfig, encoding: .utf8) + "\nsequence_parallel:\n  size: 3\n  method: ring\n"
        try bad.write(toFile: dir + "/bad.yaml", atomically: true, encoding: .utf8)
        let r = try train(ranks: 3, config: dir + "/bad.yaml", out: dir + "/bad")
        #expect(r.status != 0 && r.stderr.contains("cannot be split into 6 equal zigzag chunks"), "\(r.output)")
    }

    /// Pipeline stages (GPipe), alone and in the full DP x PP x SP grid on 8 ranks, and with
    /// tied embeddings split across the first and last stage, match one rank.
    @Test(arguments: [false, true])
    func pipelineParallelMatchesOneRank(tied: Bool) throws {
        let dir = Self.workDir("pp")
        let yaml = try String(contentsOfFile: try Self.config(in: dir, steps: 3), encoding: .utf8)
            .replacingOccurrences(of: "num_hidden_layers: 2", with: "num_hidden_layers: 4")
            .replacingOccurrences(of: "vocab_size: 256", with: "vocab_size: 256\n  tie_word_embeddings: \(tied)")
        try yaml.write(toFile: dir + "/base.yaml", atomically: true, encoding: .utf8)
        try #require(try train(ranks: 1, config: dir + "/base.yaml", out: dir + "/np1").status == 0)
        let base = try Self.lines(dir + "/np1")
        let baseWeights = try HFCheckpoint.load(directory: dir + "/np1/model").parameters.flat.array
        let interleaved = "pipeline_parallel:\n  size: 2\n  schedule: interleaved\n  virtual_stages: 2\n"
        let grids: [(Int, String)] = tied ? [(2, "pipeline_parallel:\n  size: 2\n"), (2, interleaved)]
            : [(2, "pipeline_parallel:\n  size: 2\n"), (4, "pipeline_parallel:\n  size: 4\n"), (2, interleaved),
               (2, "pipeline_parallel:\n  size: 2\n  schedule: 1f1b\n"), (4, "pipeline_parallel:\n  size: 4\n  schedule: 1f1b\n"),
               (8, "pipeline_parallel:\n  size: 2\nsequence_parallel:\n  size: 2\n  method: tokenring\n")]
        for (ranks, extra) in grids {
            let name = "\(ranks)-\(extra.contains("1f1b") ? "1f1b" : extra.contains("interleaved") ? "interleaved" : "gpipe")"
            let path = dir + "/grid\(name).yaml"
            try (yaml + "\n" + extra).write(toFile: path, atomically: true, encoding: .utf8)
            let r = try train(ranks: ranks, config: path, out: dir + "/o\(name)")
            try #require(r.status == 0, "\(extra):\n\(r.output)")
            #expect(r.stdout.contains(extra.contains("1f1b") ? "pipeline stages (1F1B"
                                      : extra.contains("interleaved") ? "pipeline stages (interleaved 1F1B, 2 virtual stages each" : "pipeline stages (GPipe"), "\(r.stdout)")
            try Self.expectMatches(dir + "/o\(name)", base: base, baseWeights: baseWeights, "np=\(ranks) \(extra)")
            try Self.expectStageShards(dir + "/o\(name)/model", stages: extra.contains("size: 4") ? 4 : 2, tied: tied)
        }
    }

    /// A pipeline run's model directory is Hugging Face's sharded layout with one shard per
    /// stage, each holding only that stage's tensors (the tied embedding once, in stage 0's).
    static func expectStageShards(_ dir: String, stages: Int, tied: Bool) throws {
        let index = try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: dir + "/model.safetensors.index.json")))
        let map = try #require((index as? [String: Any])?["weight_map"] as? [String: String])
        let files = Set(map.values)
        #expect(files.count == stages, "\(dir): \(files.sorted())")
        #expect(map["model.embed_tokens.weight"] == String(format: "model-00001-of-%05d.safetensors", stages))
        #expect(map["model.norm.weight"] == String(format: "model-%05d-of-%05d.safetensors", stages, stages))
        #expect(map["lm_head.weight"] == (tied ? nil : String(format: "model-%05d-of-%05d.safetensors", stages, stages)))
        for file in files {
            let reader = try SafetensorsReader(path: dir + "/" + file)
            #expect(Set(reader.entries.keys) == Set(map.filter { $0.value == file }.keys), "\(file) holds other tensors than its index entries")
        }
    }

    /// Stopping after a checkpoint and resuming gives bit-identical losses and weights, also
    /// with pipeline stages (whose checkpoints are written stage by stage) and tied embeddings.
    @Test(arguments: ["", "pipeline_parallel:\n  size: 2\n  schedule: 1f1b\n"])
    func resumeIsBitIdentical(pipeline: String) throws {
        let dir = Self.workDir("resume")
        let full = dir + "/full", split = dir + "/split"
        var config = try Self.config(in: dir, steps: 8, checkpointEvery: 4)
        if !pipeline.isEmpty {
            let text = try String(contentsOfFile: config, encoding: .utf8)
                .replacingOccurrences(of: "vocab_size: 256", with: "vocab_size: 256\n  tie_word_embeddings: true")
            config = dir + "/pp.yaml"
            try (text + "\n" + pipeline).write(toFile: config, atomically: true, encoding: .utf8)
        }
        try #require(try train(ranks: 2, config: config, out: full).status == 0)
        let first = try train(ranks: 2, config: config, out: split, extra: ["--stop-after", "4"])
        try #require(first.status == 0, "\(first.output)")
        let resumed = try train(ranks: 2, config: config, out: split, extra: ["--resume"])
        try #require(resumed.status == 0, "\(resumed.output)")
        #expect(resumed.stdout.contains("resuming after step 4"))
        let a = try Self.losses(full), b = try Self.losses(split)
        #expect(a.count == 8 && b.count == 8)
        #expect(a.map(\.bitPattern) == b.map(\.bitPattern), "losses \(a) vs \(b)")
        let files = try FileManager.default.contentsOfDirectory(atPath: full + "/model").filter { $0.hasSuffix(".safetensors") }
        #expect(files.count == (pipeline.isEmpty ? 1 : 2), "\(files)")
        for file in files {
            let wa = try Data(contentsOf: URL(fileURLWithPath: full + "/model/" + file))
            let wb = try Data(contentsOf: URL(fileURLWithPath: split + "/model/" + file))
            #expect(wa == wb, "final weights in \(file) differ after resume")
        }

        // A different world size is refused with the reason.
        guard pipeline.isEmpty else { return }
        let other = try train(ranks: 1, config: config, out: split, extra: ["--resume"])
        #expect(other.status != 0 && other.stderr.contains("written by 2 data-parallel ranks and this run has 1"), "\(other.output)")
    }

    /// ZeRO-1 (`train.zero: 1`): AdamW moments and update sharded over the ranks of each stage
    /// give the same losses, gradient norms and weights as the unsharded run on one rank (2 and 4
    /// data-parallel ranks, 2 stages x 2 replicas, 2 replicas x 2 sequence-parallel ranks), within
    /// the tolerance above; stopping and resuming is bit-identical; each rank keeps its share of
    /// the moments.
    @Test func zeroOneMatchesUnshardedAndResumesExactly() throws {
        let dir = Self.workDir("zero")
        let yaml = try String(contentsOfFile: try Self.config(in: dir, steps: 6, checkpointEvery: 3), encoding: .utf8)
            .replacingOccurrences(of: "num_hidden_layers: 2", with: "num_hidden_layers: 4")
        try yaml.write(toFile: dir + "/base.yaml", atomically: true, encoding: .utf8)
        try #require(try train(ranks: 1, config: dir + "/base.yaml", out: dir + "/np1").status == 0)
        let base = try Self.lines(dir + "/np1")
        let baseWeights = try HFCheckpoint.load(directory: dir + "/np1/model").parameters.flat.array
        let zeroYAML = yaml.replacingOccurrences(of: "  bucket_mb: 0.01", with: "  bucket_mb: 0.01\n  zero: 1")
        let grids = [(2, ""), (4, ""), (4, "pipeline_parallel:\n  size: 2\n"), (4, "sequence_parallel:\n  size: 2\n  method: ring\n")]
        for (ranks, extra) in grids {
            let name = "zero\(ranks)\(extra.isEmpty ? "" : extra.hasPrefix("pipeline") ? "pp" : "sp")"
            try (zeroYAML + "\n" + extra).write(toFile: dir + "/\(name).yaml", atomically: true, encoding: .utf8)
            let r = try train(ranks: ranks, config: dir + "/\(name).yaml", out: dir + "/" + name)
            try #require(r.status == 0, "\(name):\n\(r.output)")
            // The stage's ranks: all of them without stages (sequence-parallel ranks too).
            let shardRanks = extra.hasPrefix("pipeline") ? ranks / 2 : ranks
            #expect(r.stdout.contains("ZeRO-1: AdamW moments and update sharded over the \(shardRanks) ranks of each stage"), "\(r.stdout)")
            // Rank 0 keeps its share: about 1 / shardRanks of its stage's values (each bucket split evenly, to within one value).
            let line = r.stdout.split(separator: "\n").first { $0.contains("ZeRO-1:") }.map(String.init) ?? ""
            let numbers = line.split(whereSeparator: { !$0.isNumber }).compactMap { Int($0) }
            // "ZeRO-1: ... over the N ranks of each stage: rank 0 keeps K of F values ..."
            if let keep = numbers.dropFirst(3).first, let full = numbers.dropFirst(4).first {
                #expect(abs(keep * shardRanks - full) < 64 * shardRanks, "\(line)")
            } else {
                Issue.record("no ZeRO-1 line: \(r.stdout)")
            }
            try Self.expectMatches(dir + "/" + name, base: base, baseWeights: baseWeights, "ZeRO-1 np=\(ranks) \(extra)")
        }
        // Stop after the step-3 checkpoint (full moments gathered from the shards) and resume.
        let split = dir + "/zero2-split"
        let first = try train(ranks: 2, config: dir + "/zero2.yaml", out: split, extra: ["--stop-after", "3"])
        try #require(first.status == 0, "\(first.output)")
        let resumed = try train(ranks: 2, config: dir + "/zero2.yaml", out: split, extra: ["--resume"])
        try #require(resumed.status == 0, "\(resumed.output)")
        let a = try Self.losses(dir + "/zero2"), b = try Self.losses(split)
        #expect(a.count == 6 && a.map(\.bitPattern) == b.map(\.bitPattern), "losses \(a) vs \(b)")
        let wa = try Data(contentsOf: URL(fileURLWithPath: dir + "/zero2/model/model.safetensors"))
        let wb = try Data(contentsOf: URL(fileURLWithPath: split + "/model/model.safetensors"))
        #expect(wa == wb, "final weights differ after resume")
        // The plan's memory estimate counts the moments once per stage, not once per rank.
        let plain = try TorusBinary.torus(["plan", "--config", dir + "/base.yaml", "--np", "4"])
        let zero = try TorusBinary.torus(["plan", "--config", dir + "/zero4.yaml", "--np", "4"])
        #expect(zero.stdout.contains("AdamW state sharded over 4 ranks (ZeRO-1)"), "\(zero.output)")
        #expect(!plain.stdout.contains("ZeRO-1"), "\(plain.output)")
    }

    @Test func killedRankEndsTheJob() throws {
        let dir = Self.workDir("kill")
        let config = try Self.config(in: dir, steps: 50)
        let began = Date()
        let r = try TorusBinary.run("/usr/bin/mpirun", TorusBinary.rootFlags + ["--oversubscribe", "-np", "2",
                                    "-x", "TORUS_FAULT_KILL=1:3", TorusBinary.path, "train", "--config", config, "--out", dir + "/o"],
                                    timeout: 120)
        #expect(!r.timedOut, "the job hung after a rank died:\n\(r.output)")
        #expect(r.status != 0)
        #expect(r.output.contains("process rank 1") && r.output.contains("signal 9"), "\(r.output)")
        #expect(Date().timeIntervalSince(began) < 100)
    }

    @Test func badTrainingInputsGiveClearErrors() throws {
        let dir = Self.workDir("bad")
        try TokenFile.write([Int32](repeating: 3, count: 100) + [400], to: dir + "/big.tokens")
        let big = try Self.config(in: dir, steps: 2, extraData: "")
        var text = try String(contentsOfFile: big, encoding: .utf8)
        text = text.replacingOccurrences(of: "  synth_examples: 300", with: "  train: \(dir)/big.tokens")
        try text.write(toFile: dir + "/big.yaml", atomically: true, encoding: .utf8)
        let r1 = try train(ranks: 1, config: dir + "/big.yaml", out: dir + "/o1")
        #expect(r1.status != 0 && r1.stderr.contains("token 100 is 400, outside the vocabulary [0, 256)"), "\(r1.output)")

        let data = try Data(contentsOf: URL(fileURLWithPath: dir + "/big.tokens"))
        try data.prefix(50).write(to: URL(fileURLWithPath: dir + "/cut.tokens"))
        try text.replacingOccurrences(of: "big.tokens", with: "cut.tokens").write(toFile: dir + "/cut.yaml", atomically: true, encoding: .utf8)
        let r2 = try train(ranks: 1, config: dir + "/cut.yaml", out: dir + "/o2")
        #expect(r2.status != 0 && r2.stderr.contains("is truncated"), "\(r2.output)")

        try text.replacingOccurrences(of: "  seq_len: 32", with: "  seq_len: 32\n  learning_rate: 1")
            .write(toFile: dir + "/key.yaml", atomically: true, encoding: .utf8)
        let r3 = try train(ranks: 1, config: dir + "/key.yaml", out: dir + "/o3")
        #expect(r3.status != 0 && r3.stderr.contains("unknown key 'train.learning_rate'"), "\(r3.output)")

        let nan = try TorusBinary.run("/usr/bin/mpirun", TorusBinary.rootFlags + ["--oversubscribe", "-np", "2",
                                      "-x", "TORUS_FAULT_NAN=3", TorusBinary.path, "train", "--config", try Self.config(in: dir, steps: 4),
                                      "--out", dir + "/o5", "--steps", "6"], timeout: 120)
        #expect(nan.status != 0 && nan.stderr.contains("at step 3; stopping"), "\(nan.output)")
    }
}
