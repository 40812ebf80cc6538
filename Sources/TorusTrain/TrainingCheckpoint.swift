import Foundation
import TorusModel

/// What a training checkpoint records besides weights and optimizer moments.
public struct TrainerState: Codable, Equatable, Sendable {
    public var step: Int
    public var worldSize: Int
    public var options: TrainOptions
    public var dataTokens: Int
}

/// Training checkpoints under `<out>/checkpoints/step-NNNNNN/`: `model/` (a Hugging Face
/// directory, sharded by pipeline stage when there are several), the AdamW moments under
/// `exp_avg.` / `exp_avg_sq.` names (`optimizer.safetensors`, or one file per stage) and
/// `trainer.json`. Every stage's first rank writes its own files into a temporary directory
/// that is renamed into place once all succeeded; `<out>/checkpoints/latest` names the newest
/// complete checkpoint and is itself replaced atomically.
public enum TrainingCheckpoint {
    public static func directory(out: String, step: Int) -> String {
        (out as NSString).appendingPathComponent(String(format: "checkpoints/step-%06d", step))
    }

    static func latestFile(out: String) -> String { (out as NSString).appendingPathComponent("checkpoints/latest") }

    /// Writes one stage's weights and optimizer moments (the names `shards` gives it) into the
    /// checkpoint directory being built at `dir`.
    public static func writeStage(into dir: String, stage: Int, shards: StageShards, model: LlamaModel, optimizer: AdamW) throws {
        let modelDir = (dir as NSString).appendingPathComponent("model")
        let names = shards.names(stage: stage)
        try HFCheckpoint.writeShard(model, names: names, to: (modelDir as NSString).appendingPathComponent(shards.modelFile(stage: stage)))
        var tensors: [(name: String, shape: [Int], values: UnsafeBufferPointer<Float>)] = []
        for (prefix, store) in [("exp_avg.", optimizer.firstMoment), ("exp_avg_sq.", optimizer.secondMoment)] {
            for name in names {
                guard let e = store.entry(name) else { throw CheckpointError.missingTensor(directory: dir, tensor: prefix + name) }
                tensors.append((prefix + e.name, e.shape, UnsafeBufferPointer(start: store.flat.pointer + e.offset, count: e.count)))
            }
        }
        try SafetensorsWriter.write(path: (dir as NSString).appendingPathComponent(shards.optimizerFile(stage: stage)),
                                    tensors: tensors, metadata: ["format": "torus-adamw", "step": String(optimizer.step)])
    }

    /// Adds what one rank writes once (model config and index, `trainer.json`) to the
    /// checkpoint directory being built at `dir`; the model directory gets a copy of
    /// `tokenizerFile` (nil: the byte tokenizer).
    public static func complete(_ dir: String, shards: StageShards, state: TrainerState, tokenizerFile: String? = nil) throws {
        try shards.requireFiles(in: dir) { shards.optimizerFile(stage: $0) }
        try shards.writeIndex(into: (dir as NSString).appendingPathComponent("model"), tokenizerFile: tokenizerFile)
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.prettyPrinted, .sortedKeys]
        let path = (dir as NSString).appendingPathComponent("trainer.json")
        do { try encoder.encode(state).write(to: URL(fileURLWithPath: path)) } catch {
            throw CheckpointError.io(path: path, message: "write failed: \(error.localizedDescription)")
        }
    }

    /// Points `<out>/checkpoints/latest` at the complete checkpoint `dir`.
    public static func publish(out: String, dir: String) throws {
        let latest = latestFile(out: out)
        let latestTemp = latest + ".partial-\(getpid())"
        do { try (dir as NSString).lastPathComponent.write(toFile: latestTemp, atomically: false, encoding: .utf8) } catch {
            throw CheckpointError.io(path: latestTemp, message: "write failed: \(error.localizedDescription)")
        }
        guard rename(latestTemp, latest) == 0 else { throw CheckpointError.io(path: latest, message: "cannot update") }
    }

    /// The newest complete checkpoint directory under `out`: nil when there is none, an error
    /// when `latest` names a checkpoint that is not there.
    public static func latest(out: String) throws -> String? {
        guard let name = try? String(contentsOfFile: latestFile(out: out), encoding: .utf8) else { return nil }
        let dir = (out as NSString).appendingPathComponent("checkpoints/" + name.trimmingCharacters(in: .whitespacesAndNewlines))
        guard FileManager.default.fileExists(atPath: (dir as NSString).appendingPathComponent("trainer.json")) else {
            throw TrainError.resume("\(latestFile(out: out)) names \(dir), which has no trainer.json")
        }
        return dir
    }

    /// Loads the weights and optimizer moments `model` and `optimizer` hold (a stage's, or all)
    /// from `dir`, whichever files they are in; returns the recorded state.
    public static func load(dir: String, model: LlamaModel, optimizer: AdamW) throws -> TrainerState {
        let statePath = (dir as NSString).appendingPathComponent("trainer.json")
        let state: TrainerState
        do { state = try JSONDecoder().decode(TrainerState.self, from: Data(contentsOf: URL(fileURLWithPath: statePath))) } catch {
            throw CheckpointError.malformed(file: statePath, message: "\(error)")
        }
        let modelDir = (dir as NSString).appendingPathComponent("model")
        guard try HFCheckpoint.loadConfig(directory: modelDir) == model.config else {
            throw TrainError.resume("\(modelDir) has a different model config than this run")
        }
        try HFCheckpoint.readWeights(directory: modelDir, into: model)
        let files = ((try? FileManager.default.contentsOfDirectory(atPath: dir)) ?? [])
            .filter { $0.hasPrefix("optimizer") && $0.hasSuffix(".safetensors") }.sorted()
        var readerOf: [String: (file: String, reader: SafetensorsReader)] = [:]
        for file in files {
            let reader = try SafetensorsReader(path: (dir as NSString).appendingPathComponent(file))
            for name in reader.entries.keys { readerOf[name] = (file, reader) }
        }
        for (prefix, store) in [("exp_avg.", optimizer.firstMoment), ("exp_avg_sq.", optimizer.secondMoment)] {
            for e in store.entries {
                guard let found = readerOf[prefix + e.name] else {
                    throw CheckpointError.missingTensor(directory: dir + " (optimizer files: \(files.joined(separator: ", ")))", tensor: prefix + e.name)
                }
                guard let rec = found.reader.entries[prefix + e.name], rec.shape == e.shape else {
                    throw CheckpointError.shapeMismatch(file: found.file, tensor: prefix + e.name, expected: e.shape,
                                                        found: found.reader.entries[prefix + e.name]?.shape ?? [])
                }
                try found.reader.read(prefix + e.name, into: store.flat.pointer + e.offset, count: e.count)
            }
        }
        optimizer.restore(step: state.step)
        return state
    }
}
