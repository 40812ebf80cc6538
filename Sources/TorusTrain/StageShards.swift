import Foundation
import TorusModel

/// How the pipeline stages share the files of a model directory and of a checkpoint: stage s
/// writes shard s (`model-0000{s+1}-of-0000{p}.safetensors`, Hugging Face's sharded layout)
/// with the tensors it holds, a tied embedding only from the first stage. Without stages the
/// directory is a single `model.safetensors`, as before.
public struct StageShards: Sendable {
    public let config: LlamaConfig
    /// The model part of each stage, in stage order.
    public let parts: [ModelPart]

    public init(config: LlamaConfig, parts: [ModelPart]) {
        self.config = config
        self.parts = parts
    }

    /// The shards of the stages of `plan`.
    public init(config: LlamaConfig, plan: ParallelPlan) {
        self.init(config: config, parts: plan.stages.indices.map { plan.part(stage: $0, of: config) })
    }

    /// Tensor names stage `stage` writes, in layout order: those it holds that no earlier stage holds.
    public func names(stage: Int) -> [String] {
        LlamaTensors.layout(for: config).map(\.name).filter { name in
            parts[stage].holds(name, config: config) && !parts[..<stage].contains { $0.holds(name, config: config) }
        }
    }

    /// The model file stage `stage` writes.
    public func modelFile(stage: Int) -> String {
        parts.count == 1 ? "model.safetensors" : HFCheckpoint.shardFileName(stage, of: parts.count)
    }

    /// The optimizer-state file stage `stage` writes.
    public func optimizerFile(stage: Int) -> String {
        parts.count == 1 ? "optimizer.safetensors" : String(format: "optimizer-%05d-of-%05d.safetensors", stage + 1, parts.count)
    }

    /// Tensor name to model file, for the index of a sharded directory.
    public var weightMap: [String: String] {
        var map: [String: String] = [:]
        for s in parts.indices { for name in names(stage: s) { map[name] = modelFile(stage: s) } }
        return map
    }

    /// Throws unless every stage's file (`file(stage)`) is in `dir`: a stage whose writer saw
    /// another file system (no shared storage) must not leave a published directory without it.
    public func requireFiles(in dir: String, _ file: (Int) -> String) throws {
        for s in parts.indices {
            let path = (dir as NSString).appendingPathComponent(file(s))
            guard FileManager.default.fileExists(atPath: path) else {
                throw CheckpointError.io(path: path, message: "stage \(s)'s file is missing; do all ranks see the same output directory (shared storage)?")
            }
        }
    }

    /// Writes `config.json`, the tokenizer and, with several stages, the shard index into
    /// `dir`, completing a model directory whose shards the stages wrote (all of which must be
    /// there). The tokenizer is a copy of `tokenizerFile` (the `tokenizer.json` the model was
    /// trained with); when it is nil, the one `HFCheckpoint.writeConfig` writes (the byte
    /// tokenizer, for vocabularies that hold the bytes).
    public func writeIndex(into dir: String, tokenizerFile: String? = nil) throws {
        try requireFiles(in: dir) { modelFile(stage: $0) }
        try HFCheckpoint.writeConfig(config, to: (dir as NSString).appendingPathComponent("config.json"))
        if let tokenizerFile {
            let target = (dir as NSString).appendingPathComponent("tokenizer.json")
            do {
                try? FileManager.default.removeItem(atPath: target)
                try FileManager.default.copyItem(atPath: tokenizerFile, toPath: target)
            } catch {
                throw CheckpointError.io(path: target, message: "cannot copy the tokenizer \(tokenizerFile): \(error.localizedDescription)")
            }
        }
        if parts.count > 1 { try HFCheckpoint.writeIndex(config: config, weightMap: weightMap, into: dir) }
    }
}
