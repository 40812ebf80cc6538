import Foundation
import TorusTensor

/// Hugging Face model directories: `config.json` plus `model.safetensors`, or shards
/// `model-0000i-of-0000n.safetensors` with `model.safetensors.index.json`, using the
/// transformers LLaMA tensor names.
public enum HFCheckpoint {
    /// Reads the LLaMA config of a directory, refusing features Torus does not implement.
    public static func loadConfig(directory: String) throws -> LlamaConfig {
        let path = (directory as NSString).appendingPathComponent("config.json")
        guard FileManager.default.fileExists(atPath: path) else { throw CheckpointError.missingFile(path) }
        let data: Data
        do { data = try Data(contentsOf: URL(fileURLWithPath: path)) } catch {
            throw CheckpointError.io(path: path, message: error.localizedDescription)
        }
        guard let object = (try? JSONSerialization.jsonObject(with: data)) as? [String: Any] else {
            throw CheckpointError.config(file: path, message: "not a JSON object")
        }
        if let type = object["model_type"] as? String, type != "llama" {
            throw CheckpointError.config(file: path, message: "model_type is \"\(type)\"; Torus loads \"llama\" models")
        }
        if let scaling = object["rope_scaling"], !(scaling is NSNull) {
            throw CheckpointError.config(file: path, message: "rope_scaling \(scaling) is not supported (only plain RoPE)")
        }
        for flag in ["attention_bias", "mlp_bias"] where (object[flag] as? Bool) == true {
            throw CheckpointError.config(file: path, message: "\(flag) = true is not supported")
        }
        if let act = object["hidden_act"] as? String, act != "silu" {
            throw CheckpointError.config(file: path, message: "hidden_act \"\(act)\" is not supported (only silu)")
        }
        let config: LlamaConfig
        do { config = try JSONDecoder().decode(LlamaConfig.self, from: data) } catch {
            throw CheckpointError.config(file: path, message: "cannot read the LLaMA fields: \(describe(error))")
        }
        do { try config.validate() } catch { throw CheckpointError.config(file: path, message: "\(error)") }
        return config
    }

    /// Loads a model directory written by Torus or by transformers; with `part`, only the
    /// tensors of that part (a pipeline stage's) are read and held.
    public static func load(directory: String, part: ModelPart? = nil) throws -> LlamaModel {
        let config = try loadConfig(directory: directory)
        let model = try LlamaModel(config: config, part: part)
        try readWeights(directory: directory, into: model)
        return model
    }

    /// Reads the tensors `model` holds from the weights of a model directory (one file or
    /// shards with an index), checking names and shapes.
    public static func readWeights(directory: String, into model: LlamaModel) throws {
        let config = model.config
        let fm = FileManager.default
        let single = (directory as NSString).appendingPathComponent("model.safetensors")
        let indexPath = (directory as NSString).appendingPathComponent("model.safetensors.index.json")
        var fileOf: [String: String] = [:]
        if fm.fileExists(atPath: single) {
            let reader = try SafetensorsReader(path: single)
            for name in reader.entries.keys { fileOf[name] = "model.safetensors" }
        } else if fm.fileExists(atPath: indexPath) {
            guard let data = fm.contents(atPath: indexPath),
                  let obj = (try? JSONSerialization.jsonObject(with: data)) as? [String: Any],
                  let map = obj["weight_map"] as? [String: String] else {
                throw CheckpointError.malformed(file: indexPath, message: "no weight_map object")
            }
            fileOf = map
        } else {
            throw CheckpointError.missingFile((directory as NSString).appendingPathComponent("model.safetensors"))
        }
        var readers: [String: SafetensorsReader] = [:]
        for entry in model.parameters.entries {
            guard let file = fileOf[entry.name] else {
                throw CheckpointError.missingTensor(directory: directory, tensor: entry.name)
            }
            if readers[file] == nil {
                readers[file] = try SafetensorsReader(path: (directory as NSString).appendingPathComponent(file))
            }
            guard let reader = readers[file], let rec = reader.entries[entry.name] else {
                throw CheckpointError.missingTensor(directory: directory, tensor: entry.name)
            }
            guard rec.shape == entry.shape else {
                throw CheckpointError.shapeMismatch(file: file, tensor: entry.name, expected: entry.shape, found: rec.shape)
            }
            try reader.read(entry.name, into: model.parameters.flat.pointer + entry.offset, count: entry.count)
        }
        let known = Set(LlamaTensors.layout(for: config).map(\.name))
        for (name, file) in fileOf where !known.contains(name) {
            // transformers may keep lm_head.weight in tied checkpoints and rotary buffers in old ones.
            if name == "lm_head.weight" && config.tieWordEmbeddings { continue }
            if name.hasSuffix("rotary_emb.inv_freq") { continue }
            throw CheckpointError.unexpectedTensor(file: file, tensor: name)
        }
    }

    /// The file name of shard `index` (from 0) of `count` in a sharded directory.
    public static func shardFileName(_ index: Int, of count: Int) -> String {
        String(format: "model-%05d-of-%05d.safetensors", index + 1, count)
    }

    /// Writes the tensors named `names` (all held by `model`) to one safetensors file at `path`;
    /// one shard of a directory that several writers (pipeline stages) fill together.
    public static func writeShard(_ model: LlamaModel, names: [String], to path: String) throws {
        var tensors: [(name: String, shape: [Int], values: UnsafeBufferPointer<Float>)] = []
        for name in names {
            guard let e = model.parameters.entry(name) else { throw CheckpointError.missingTensor(directory: path, tensor: name) }
            tensors.append((e.name, e.shape, UnsafeBufferPointer(start: model.parameters.flat.pointer + e.offset, count: e.count)))
        }
        try SafetensorsWriter.write(path: path, tensors: tensors)
    }

    /// Writes `model.safetensors.index.json` (`weightMap`: tensor name to shard file) into `dir`.
    public static func writeIndex(config: LlamaConfig, weightMap: [String: String], into dir: String) throws {
        let total = LlamaTensors.layout(for: config).reduce(0) { $0 + $1.shape.reduce(1, *) * 4 }
        let index: [String: Any] = ["metadata": ["total_size": total], "weight_map": weightMap]
        let data = try JSONSerialization.data(withJSONObject: index, options: [.prettyPrinted, .sortedKeys])
        try write(data, to: (dir as NSString).appendingPathComponent("model.safetensors.index.json"))
    }

    /// Writes `model` as a Hugging Face directory at `directory`, atomically: everything is
    /// written to a temporary sibling and renamed into place, so `directory` holds either the
    /// old complete checkpoint or the new one. Shards when the weights exceed `maxShardBytes`.
    public static func save(_ model: LlamaModel, to directory: String, maxShardBytes: Int = 2 << 30) throws {
        let fm = FileManager.default
        let url = URL(fileURLWithPath: directory).standardizedFileURL
        let parent = url.deletingLastPathComponent().path
        do { try fm.createDirectory(atPath: parent, withIntermediateDirectories: true) } catch {
            throw CheckpointError.io(path: parent, message: "cannot create directory: \(error.localizedDescription)")
        }
        let temp = (parent as NSString).appendingPathComponent(".\(url.lastPathComponent).partial-\(getpid())")
        try? fm.removeItem(atPath: temp)
        do { try fm.createDirectory(atPath: temp, withIntermediateDirectories: false) } catch {
            throw CheckpointError.io(path: temp, message: "cannot create directory: \(error.localizedDescription)")
        }
        do {
            try writeConfig(model.config, to: (temp as NSString).appendingPathComponent("config.json"))
            try writeWeights(model, into: temp, maxShardBytes: maxShardBytes)
            try replace(directory: url.path, with: temp)
        } catch {
            try? fm.removeItem(atPath: temp)
            throw error
        }
    }

    static func writeWeights(_ model: LlamaModel, into dir: String, maxShardBytes: Int) throws {
        var shards: [[String]] = [[]]
        var shardBytes = 0
        for e in model.parameters.entries {
            if shardBytes > 0 && shardBytes + e.count * 4 > maxShardBytes {
                shards.append([])
                shardBytes = 0
            }
            shards[shards.count - 1].append(e.name)
            shardBytes += e.count * 4
        }
        if shards.count == 1 {
            try writeShard(model, names: shards[0], to: (dir as NSString).appendingPathComponent("model.safetensors"))
            return
        }
        var weightMap: [String: String] = [:]
        for (i, shard) in shards.enumerated() {
            let name = shardFileName(i, of: shards.count)
            try writeShard(model, names: shard, to: (dir as NSString).appendingPathComponent(name))
            for n in shard { weightMap[n] = name }
        }
        try writeIndex(config: model.config, weightMap: weightMap, into: dir)
    }

    /// Writes a transformers `config.json` for `c` at `path`.
    public static func writeConfig(_ c: LlamaConfig, to path: String) throws {
        var object: [String: Any] = [
            "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_act": "silu",
            "torch_dtype": "float32", "attention_bias": false, "mlp_bias": false, "attention_dropout": 0.0,
            "hidden_size": c.hiddenSize, "intermediate_size": c.intermediateSize,
            "num_hidden_layers": c.numHiddenLayers, "num_attention_heads": c.numAttentionHeads,
            "num_key_value_heads": c.numKeyValueHeads, "rms_norm_eps": c.rmsNormEps, "rope_theta": c.ropeTheta,
            "vocab_size": c.vocabSize, "tie_word_embeddings": c.tieWordEmbeddings,
            "max_position_embeddings": c.maxPositionEmbeddings, "initializer_range": c.initializerRange,
            "rope_scaling": NSNull(), "use_cache": true,
        ]
        if let headDim = c.headDim { object["head_dim"] = headDim }
        object["bos_token_id"] = NSNull()
        object["eos_token_id"] = NSNull()
        let data = try JSONSerialization.data(withJSONObject: object, options: [.prettyPrinted, .sortedKeys])
        try write(data, to: path)
        // Torus models read bytes: the directory carries the byte tokenizer so that transformers,
        // vLLM and `vllm bench serve` load it as it is.
        if c.vocabSize >= ByteTokenizer.vocabularyFloor {
            let dir = (path as NSString).deletingLastPathComponent
            try write(Data(TokenizerJSON.byteTokenizerJSON().utf8), to: (dir as NSString).appendingPathComponent("tokenizer.json"))
            let tokenizerConfig: [String: Any] = [
                "tokenizer_class": "PreTrainedTokenizerFast", "model_max_length": c.maxPositionEmbeddings,
                "clean_up_tokenization_spaces": false, "added_tokens_decoder": [String: Any](),
                "bos_token": NSNull(), "eos_token": NSNull(), "chat_template": chatMLJinja,
            ]
            try write(try JSONSerialization.data(withJSONObject: tokenizerConfig, options: [.prettyPrinted, .sortedKeys]),
                      to: (dir as NSString).appendingPathComponent("tokenizer_config.json"))
        }
    }

    /// The ChatML template in Jinja, as Hugging Face tokenizers carry it.
    public static let chatMLJinja = "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"

    static func write(_ data: Data, to path: String) throws {
        do { try data.write(to: URL(fileURLWithPath: path)) } catch {
            throw CheckpointError.io(path: path, message: "write failed: \(error.localizedDescription)")
        }
    }

    /// Moves `temp` to `target`, replacing any existing directory there.
    public static func replace(directory target: String, with temp: String) throws {
        let fm = FileManager.default
        if fm.fileExists(atPath: target) {
            let old = target + ".old-\(getpid())"
            try? fm.removeItem(atPath: old)
            guard rename(target, old) == 0 else {
                throw CheckpointError.io(path: target, message: "cannot move the previous checkpoint aside: \(String(cString: strerror(errno)))")
            }
            guard rename(temp, target) == 0 else {
                let message = String(cString: strerror(errno))
                _ = rename(old, target)
                throw CheckpointError.io(path: target, message: "cannot move the new checkpoint into place: \(message)")
            }
            try? fm.removeItem(atPath: old)
        } else {
            guard rename(temp, target) == 0 else {
                throw CheckpointError.io(path: target, message: "cannot move the new checkpoint into place: \(String(cString: strerror(errno)))")
            }
        }
    }

    static func describe(_ error: Error) -> String {
        switch error {
        case let DecodingError.keyNotFound(key, _): return "missing key \(key.stringValue)"
        case let DecodingError.typeMismatch(_, ctx): return "wrong type at \(ctx.codingPath.map(\.stringValue).joined(separator: "."))"
        case let DecodingError.valueNotFound(_, ctx): return "null at \(ctx.codingPath.map(\.stringValue).joined(separator: "."))"
        default: return "\(error)"
        }
    }
}
