import Foundation
import TorusModel

/// What a training checkpoint records besides weights and optimizer moments.
public struct TrainerState: Codable, Equatable, Sendable {
    public var step: Int
    public var worldSize: Int
    public var options: TrainOptions
    public var dataTokens: Int
    public var loss: Float
}

/// Training checkpoints under `<out>/checkpoints/step-NNNNNN/`: `model/` (a Hugging Face
/// directory), `optimizer.safetensors` (AdamW moments under `exp_avg.` / `exp_avg_sq.` names)
/// and `trainer.json`. A checkpoint is written under a temporary name and renamed into place;
/// `<out>/checkpoints/latest` names the newest complete one and is itself replaced atomically.
public enum TrainingCheckpoint {
    public static func directory(out: String, step: Int) -> String {
        (out as NSString).appendingPathComponent(String(format: "checkpoints/step-%06d", step))
    }

    static func latestFile(out: String) -> String { (out as NSString).appendingPathComponent("checkpoints/latest") }

    /// Writes the checkpoint (call on one rank); returns its directory.
    @discardableResult
    public static func write(out: String, model: LlamaModel, optimizer: AdamW, state: TrainerState) throws -> String {
        let fm = FileManager.default
        let final = directory(out: out, step: state.step)
        let parent = (final as NSString).deletingLastPathComponent
        let temp = (parent as NSString).appendingPathComponent(".\((final as NSString).lastPathComponent).partial-\(getpid())")
        try? fm.removeItem(atPath: temp)
        do {
            try fm.createDirectory(atPath: temp, withIntermediateDirectories: true)
            try HFCheckpoint.save(model, to: (temp as NSString).appendingPathComponent("model"))
            var tensors: [(name: String, shape: [Int], values: UnsafeBufferPointer<Float>)] = []
            for (prefix, store) in [("exp_avg.", optimizer.firstMoment), ("exp_avg_sq.", optimizer.secondMoment)] {
                for e in store.entries {
                    tensors.append((prefix + e.name, e.shape, UnsafeBufferPointer(start: store.flat.pointer + e.offset, count: e.count)))
                }
            }
            try SafetensorsWriter.write(path: (temp as NSString).appendingPathComponent("optimizer.safetensors"), tensors: tensors,
                                        metadata: ["format": "torus-adamw", "step": String(optimizer.step)])
            let encoder = JSONEncoder()
            encoder.outputFormatting = [.prettyPrinted, .sortedKeys]
            try encoder.encode(state).write(to: URL(fileURLWithPath: (temp as NSString).appendingPathComponent("trainer.json")))
            try HFCheckpoint.replace(directory: final, with: temp)
            let latest = latestFile(out: out)
            let latestTemp = latest + ".partial-\(getpid())"
            try (final as NSString).lastPathComponent.write(toFile: latestTemp, atomically: false, encoding: .utf8)
            guard rename(latestTemp, latest) == 0 else { throw CheckpointError.io(path: latest, message: "cannot update") }
        } catch {
            try? fm.removeItem(atPath: temp)
            throw error
        }
        return final
    }

    /// The newest complete checkpoint directory under `out`, if any.
    public static func latest(out: String) -> String? {
        guard let name = try? String(contentsOfFile: latestFile(out: out), encoding: .utf8) else { return nil }
        let dir = (out as NSString).appendingPathComponent("checkpoints/" + name.trimmingCharacters(in: .whitespacesAndNewlines))
        return FileManager.default.fileExists(atPath: (dir as NSString).appendingPathComponent("trainer.json")) ? dir : nil
    }

    /// Loads weights and optimizer state from `dir` into `model` and `optimizer`; returns the state.
    public static func load(dir: String, model: LlamaModel, optimizer: AdamW) throws -> TrainerState {
        let stateData = try Data(contentsOf: URL(fileURLWithPath: (dir as NSString).appendingPathComponent("trainer.json")))
        let state = try JSONDecoder().decode(TrainerState.self, from: stateData)
        let saved = try HFCheckpoint.load(directory: (dir as NSString).appendingPathComponent("model"))
        guard saved.config == model.config else {
            throw TrainError.resume("\(dir)/model has a different model config than this run")
        }
        model.parameters.flat.copy(from: saved.parameters.flat)
        let reader = try SafetensorsReader(path: (dir as NSString).appendingPathComponent("optimizer.safetensors"))
        for (prefix, store) in [("exp_avg.", optimizer.firstMoment), ("exp_avg_sq.", optimizer.secondMoment)] {
            for e in store.entries {
                guard let rec = reader.entries[prefix + e.name], rec.shape == e.shape else {
                    throw CheckpointError.missingTensor(directory: dir + "/optimizer.safetensors", tensor: prefix + e.name)
                }
                try reader.read(prefix + e.name, into: store.flat.pointer + e.offset, count: e.count)
            }
        }
        optimizer.restore(step: state.step)
        return state
    }
}
