import Foundation
import TorusModel
import TorusTrain
import Yams

/// A problem with a YAML config, naming the file and the key.
struct ConfigError: Error, CustomStringConvertible {
    let file: String
    let message: String
    var description: String { "config \(file): \(message)" }
}

/// The `train:` section.
struct TrainSection {
    var steps = 100
    var batchSize = 8
    var microBatches = 1
    var seqLen = 256
    var lr = 3e-3
    var minLR = 3e-4
    var warmupSteps = 10
    var weightDecay = 0.1
    var beta1 = 0.9, beta2 = 0.95, eps = 1e-8
    var clipNorm = 1.0
    var logEvery = 10
    var checkpointEvery = 0
    var checkWeightsEvery = 50
    var bucketMB = 25.0
    /// Drive MPI progress from a background thread every this many microseconds (0: off).
    var progressUs = 0
    var out = "runs/train"
    var initFrom: String?
    /// Evaluate held-out answer accuracy every this many steps (0: at the end only; synth and
    /// synth_rag held-out data).
    var evalEvery = 0
    /// ZeRO stage (0 or 1): 1 shards the AdamW moments and the update over the data-parallel ranks.
    var zero = 0

    static let keys = ["steps", "batch_size", "micro_batches", "seq_len", "lr", "min_lr", "warmup_steps", "weight_decay",
                       "beta1", "beta2", "eps", "clip_norm", "log_every", "checkpoint_every", "check_weights_every",
                       "bucket_mb", "progress_us", "out", "init_from", "eval_every", "zero"]
}

/// The `data:` section: `train` and `heldout` are token or text files, or a built-in corpus
/// generated in memory from the seed: `synth` (short QA), `synth_rag` (RAG prompts) or, for
/// training, `synth_drill` (the binding drill of `BindingDrill`).
struct DataSection {
    var train = "synth"
    var heldout: String? = "synth"
    var synthExamples = 20000
    /// synth_rag: documents per prompt.
    var ragDocuments = 6...10
    /// synth_rag: "all" tokens carry loss, or "questions" only (documents are context).
    var ragLoss = "all"
    /// synth_rag: documents with filler (false: facts only).
    var ragFiller = true
    /// synth_rag: extra questions asking for the friend or sister a document names (RAGCorpus.linkQuestions).
    var ragLinkQuestions = false
    /// synth_drill: the stages of the binding drill mixed in its examples (pairs, one_word,
    /// two_words, questions); YAML takes one name or a list.
    var drill: [BindingDrill.Stage] = [.pairs]
    /// synth_drill: names per example.
    var drillPairs = 1...2
    /// synth_drill: kinds of fact per name (statements and questions stages).
    var drillKinds = 1...1
    /// synth_drill: friends (another name as the value) among the kinds (statements and questions stages).
    var drillFriends = false
    /// A tokenizer.json for the built-in corpora (default: bytes); copied into the model directory.
    var tokenizer: String?
    /// The built-in RAG corpus these settings describe.
    func ragCorpus(seed: UInt64) -> RAGCorpus {
        var corpus = RAGCorpus(seed: seed, documents: ragDocuments, filler: ragFiller)
        corpus.linkQuestions = ragLinkQuestions
        return corpus
    }
    static let keys = ["train", "heldout", "synth_examples", "rag_documents", "rag_loss", "rag_filler", "rag_link_questions", "drill", "drill_pairs", "drill_kinds", "drill_friends",
                       "tokenizer"]  // heldout: file, synth or none
}

/// The contents of a `configs/*.yaml` file.
struct RunConfig {
    var model: LlamaConfig
    var seed: UInt64
    var train = TrainSection()
    var data = DataSection()
    var sequenceParallel: SequenceParallelOptions?
    var pipelineParallel = 1
    var pipelineSchedule = "gpipe"
    /// Virtual stages per pipeline stage (interleaved schedule).
    var pipelineVirtualStages = 1

    /// `serve:` belongs to `torus serve` (ServeSection); training ignores it.
    static let topLevelKeys = ["model", "seed", "train", "data", "sequence_parallel", "pipeline_parallel", "serve"]
    static let sequenceParallelKeys = ["size", "method", "layout"]

    static func load(path: String) throws -> RunConfig {
        guard let text = try? String(contentsOfFile: path, encoding: .utf8) else {
            throw ConfigError(file: path, message: "cannot read the file")
        }
        let root: Any?
        do { root = try Yams.load(yaml: text) } catch {
            throw ConfigError(file: path, message: "not valid YAML: \(error)")
        }
        guard let map = root as? [String: Any] else { throw ConfigError(file: path, message: "the top level must be a mapping") }
        try checkKeys(map, known: topLevelKeys, section: nil, file: path)
        guard let modelMap = map["model"] as? [String: Any] else {
            throw ConfigError(file: path, message: "missing mapping 'model'")
        }
        try checkKeys(modelMap, known: LlamaConfig.knownKeys, section: "model", file: path)
        let model: LlamaConfig
        do {
            let json = try JSONSerialization.data(withJSONObject: modelMap)
            model = try JSONDecoder().decode(LlamaConfig.self, from: json)
            try model.validate()
        } catch let e as ModelConfigError {
            throw ConfigError(file: path, message: e.description)
        } catch let DecodingError.keyNotFound(key, _) {
            throw ConfigError(file: path, message: "missing key 'model.\(key.stringValue)'")
        } catch let DecodingError.typeMismatch(_, ctx) {
            throw ConfigError(file: path, message: "wrong type for 'model.\(ctx.codingPath.map(\.stringValue).joined(separator: "."))'")
        } catch {
            throw ConfigError(file: path, message: "\(error)")
        }
        var config = RunConfig(model: model, seed: 0)
        let r = Reader(file: path)
        if map["seed"] != nil { config.seed = UInt64(try r.int(map, "seed", section: nil, min: 0)) }
        if let t = map["train"] {
            guard let t = t as? [String: Any] else { throw ConfigError(file: path, message: "'train' must be a mapping") }
            try checkKeys(t, known: TrainSection.keys, section: "train", file: path)
            var s = TrainSection()
            if t["steps"] != nil { s.steps = try r.int(t, "steps", section: "train", min: 1) }
            if t["batch_size"] != nil { s.batchSize = try r.int(t, "batch_size", section: "train", min: 1) }
            if t["micro_batches"] != nil { s.microBatches = try r.int(t, "micro_batches", section: "train", min: 1) }
            if t["seq_len"] != nil { s.seqLen = try r.int(t, "seq_len", section: "train", min: 1) }
            if t["lr"] != nil { s.lr = try r.double(t, "lr", section: "train") }
            if t["min_lr"] != nil { s.minLR = try r.double(t, "min_lr", section: "train") }
            if t["warmup_steps"] != nil { s.warmupSteps = try r.int(t, "warmup_steps", section: "train", min: 0) }
            if t["weight_decay"] != nil { s.weightDecay = try r.double(t, "weight_decay", section: "train") }
            if t["beta1"] != nil { s.beta1 = try r.double(t, "beta1", section: "train") }
            if t["beta2"] != nil { s.beta2 = try r.double(t, "beta2", section: "train") }
            if t["eps"] != nil { s.eps = try r.double(t, "eps", section: "train") }
            if t["clip_norm"] != nil { s.clipNorm = try r.double(t, "clip_norm", section: "train") }
            if t["log_every"] != nil { s.logEvery = try r.int(t, "log_every", section: "train", min: 1) }
            if t["checkpoint_every"] != nil { s.checkpointEvery = try r.int(t, "checkpoint_every", section: "train", min: 0) }
            if t["check_weights_every"] != nil { s.checkWeightsEvery = try r.int(t, "check_weights_every", section: "train", min: 0) }
            if t["bucket_mb"] != nil { s.bucketMB = try r.double(t, "bucket_mb", section: "train") }
            if t["progress_us"] != nil { s.progressUs = try r.int(t, "progress_us", section: "train", min: 0) }
            if t["out"] != nil { s.out = try r.string(t, "out", section: "train") }
            if t["init_from"] != nil { s.initFrom = try r.string(t, "init_from", section: "train") }
            if t["eval_every"] != nil { s.evalEvery = try r.int(t, "eval_every", section: "train", min: 0) }
            if t["zero"] != nil {
                s.zero = try r.int(t, "zero", section: "train", min: 0)
                guard s.zero <= 1 else { throw ConfigError(file: path, message: "train.zero is \(s.zero); ZeRO stages 0 (off) and 1 (sharded AdamW) are supported") }
            }
            config.train = s
        }
        if let d = map["data"] {
            guard let d = d as? [String: Any] else { throw ConfigError(file: path, message: "'data' must be a mapping") }
            try checkKeys(d, known: DataSection.keys, section: "data", file: path)
            if d["train"] != nil { config.data.train = try r.string(d, "train", section: "data") }
            if let h = d["heldout"] {
                // `heldout: none` (or null) turns the end-of-training evaluation off.
                if h is NSNull || (h as? String) == "none" { config.data.heldout = nil }
                else { config.data.heldout = try r.string(d, "heldout", section: "data") }
            }
            if d["synth_examples"] != nil { config.data.synthExamples = try r.int(d, "synth_examples", section: "data", min: 1) }
            if d["rag_documents"] != nil {
                guard let pair = d["rag_documents"] as? [Int], pair.count == 2, pair[0] >= 1, pair[0] <= pair[1] else {
                    throw ConfigError(file: path, message: "'data.rag_documents' must be [min, max] with 1 <= min <= max, e.g. [6, 10]")
                }
                config.data.ragDocuments = pair[0]...pair[1]
            }
            if let value = d["drill"] {
                let names = (value as? [Any] ?? [value]).map { "\($0)" }
                config.data.drill = try names.map { name in
                    guard let stage = BindingDrill.Stage(rawValue: name) else {
                        throw ConfigError(file: path, message: "'data.drill' names '\(name)'; known: "
                                          + BindingDrill.Stage.allCases.map(\.rawValue).joined(separator: ", "))
                    }
                    return stage
                }
                guard !config.data.drill.isEmpty else { throw ConfigError(file: path, message: "'data.drill' is an empty list") }
            }
            if d["drill_pairs"] != nil {
                guard let pair = d["drill_pairs"] as? [Int], pair.count == 2, pair[0] >= 1, pair[0] <= pair[1] else {
                    throw ConfigError(file: path, message: "'data.drill_pairs' must be [min, max] with 1 <= min <= max, e.g. [1, 2]")
                }
                config.data.drillPairs = pair[0]...pair[1]
            }
            if d["drill_kinds"] != nil {
                guard let pair = d["drill_kinds"] as? [Int], pair.count == 2, pair[0] >= 1, pair[0] <= pair[1], pair[1] <= 4 else {
                    throw ConfigError(file: path, message: "'data.drill_kinds' must be [min, max] with 1 <= min <= max <= 4, e.g. [1, 3]")
                }
                config.data.drillKinds = pair[0]...pair[1]
            }
            if d["drill_friends"] != nil { config.data.drillFriends = try r.bool(d, "drill_friends", section: "data") }
            if d["tokenizer"] != nil { config.data.tokenizer = try r.string(d, "tokenizer", section: "data") }
            if d["rag_filler"] != nil { config.data.ragFiller = try r.bool(d, "rag_filler", section: "data") }
            if d["rag_link_questions"] != nil { config.data.ragLinkQuestions = try r.bool(d, "rag_link_questions", section: "data") }
            if d["rag_loss"] != nil {
                config.data.ragLoss = try r.string(d, "rag_loss", section: "data")
                guard ["all", "questions"].contains(config.data.ragLoss) else {
                    throw ConfigError(file: path, message: "'data.rag_loss' is '\(config.data.ragLoss)'; known: all, questions")
                }
            }
        }
        if let sp = map["sequence_parallel"] {
            guard let sp = sp as? [String: Any] else { throw ConfigError(file: path, message: "'sequence_parallel' must be a mapping") }
            try checkKeys(sp, known: sequenceParallelKeys, section: "sequence_parallel", file: path)
            var o = SequenceParallelOptions(size: try r.int(sp, "size", section: "sequence_parallel", min: 1))
            if sp["method"] != nil {
                o.method = try r.string(sp, "method", section: "sequence_parallel")
                guard ["ring", "tokenring"].contains(o.method) else {
                    throw ConfigError(file: path, message: "'sequence_parallel.method' is '\(o.method)'; known: ring, tokenring")
                }
            }
            if sp["layout"] != nil {
                o.layout = try r.string(sp, "layout", section: "sequence_parallel")
                guard ["zigzag", "contiguous"].contains(o.layout) else {
                    throw ConfigError(file: path, message: "'sequence_parallel.layout' is '\(o.layout)'; known: zigzag, contiguous")
                }
            }
            config.sequenceParallel = o
        }
        if let pp = map["pipeline_parallel"] {
            guard let pp = pp as? [String: Any] else { throw ConfigError(file: path, message: "'pipeline_parallel' must be a mapping") }
            try checkKeys(pp, known: ["size", "schedule", "virtual_stages"], section: "pipeline_parallel", file: path)
            config.pipelineParallel = try r.int(pp, "size", section: "pipeline_parallel", min: 1)
            if pp["schedule"] != nil {
                config.pipelineSchedule = try r.string(pp, "schedule", section: "pipeline_parallel")
                guard PipelineSchedule.names.contains(config.pipelineSchedule) else {
                    throw ConfigError(file: path, message: "'pipeline_parallel.schedule' is '\(config.pipelineSchedule)'; known: \(PipelineSchedule.names.joined(separator: ", "))")
                }
            }
            if pp["virtual_stages"] != nil {
                config.pipelineVirtualStages = try r.int(pp, "virtual_stages", section: "pipeline_parallel", min: 1)
            }
        }
        return config
    }

    static func checkKeys(_ map: [String: Any], known: [String], section: String?, file: String) throws {
        for key in map.keys.sorted() where !known.contains(key) {
            let name = section.map { "\($0).\(key)" } ?? key
            throw ConfigError(file: file, message: "unknown key '\(name)' (known: \(known.joined(separator: ", ")))")
        }
    }

    struct Reader {
        let file: String
        func name(_ key: String, _ section: String?) -> String { section.map { "\($0).\(key)" } ?? key }
        func int(_ m: [String: Any], _ key: String, section: String?, min: Int) throws -> Int {
            guard let v = m[key] as? Int, v >= min else {
                throw ConfigError(file: file, message: "'\(name(key, section))' must be an integer >= \(min), got \(m[key].map { "\($0)" } ?? "nothing")")
            }
            return v
        }
        func double(_ m: [String: Any], _ key: String, section: String?) throws -> Double {
            if let v = m[key] as? Double, v.isFinite, v >= 0 { return v }
            if let v = m[key] as? Int, v >= 0 { return Double(v) }
            throw ConfigError(file: file, message: "'\(name(key, section))' must be a non-negative number, got \(m[key].map { "\($0)" } ?? "nothing")")
        }
        func bool(_ m: [String: Any], _ key: String, section: String?) throws -> Bool {
            guard let v = m[key] as? Bool else {
                throw ConfigError(file: file, message: "'\(name(key, section))' must be true or false, got \(m[key].map { "\($0)" } ?? "nothing")")
            }
            return v
        }
        func string(_ m: [String: Any], _ key: String, section: String?) throws -> String {
            guard let v = m[key] as? String, !v.isEmpty else {
                throw ConfigError(file: file, message: "'\(name(key, section))' must be a non-empty string")
            }
            return v
        }
    }
}
