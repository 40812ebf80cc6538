import Foundation
import Testing
import TorusModel
import TorusTensor

func temporaryDirectory(_ name: String) -> String {
    let dir = NSTemporaryDirectory() + "torus-tests-\(getpid())-\(name)-\(UInt32.random(in: 0...UInt32.max))"
    try? FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
    return dir
}

@Suite struct CheckpointTests {
    static let config = LlamaConfig(hiddenSize: 16, intermediateSize: 24, numHiddenLayers: 2, numAttentionHeads: 4,
                                    numKeyValueHeads: 2, vocabSize: 40, maxPositionEmbeddings: 32)

    /// Loading with a part reads only that part's tensors, with the saved values.
    @Test func loadingAPartReadsOnlyItsTensors() throws {
        let model = try LlamaModel.initialized(config: Self.config, seed: 3)
        let dir = temporaryDirectory("part")
        try HFCheckpoint.save(model, to: dir, maxShardBytes: 4096)
        let part = ModelPart.stage(layers: 1..<2, of: Self.config)
        let loaded = try HFCheckpoint.load(directory: dir, part: part)
        #expect(loaded.part == part)
        #expect(Set(loaded.parameters.entries.map(\.name))
                == Set(LlamaTensors.layout(for: Self.config).map(\.name).filter { $0.hasPrefix("model.layers.1.") || $0 == "model.norm.weight" || $0 == "lm_head.weight" }))
        for e in loaded.parameters.entries {
            #expect(loaded.parameters.tensor(e.name).array == model.parameters.tensor(e.name).array, "\(e.name)")
        }
    }

    @Test(arguments: [false, true])
    func roundTripPreservesEveryWeight(tied: Bool) throws {
        var c = Self.config
        c.tieWordEmbeddings = tied
        let model = try LlamaModel.initialized(config: c, seed: 1)
        let dir = temporaryDirectory("roundtrip") + "/model"
        try HFCheckpoint.save(model, to: dir)
        let loaded = try HFCheckpoint.load(directory: dir)
        #expect(loaded.config == c)
        #expect(loaded.parameters.flat.array == model.parameters.flat.array)
        // Saving again over an existing checkpoint replaces it and leaves no temporary behind.
        try HFCheckpoint.save(loaded, to: dir)
        let siblings = try FileManager.default.contentsOfDirectory(atPath: (dir as NSString).deletingLastPathComponent)
        #expect(siblings == ["model"])
    }

    @Test func shardedRoundTrip() throws {
        let model = try LlamaModel.initialized(config: Self.config, seed: 2)
        let dir = temporaryDirectory("sharded") + "/model"
        try HFCheckpoint.save(model, to: dir, maxShardBytes: 4096)
        let files = try FileManager.default.contentsOfDirectory(atPath: dir).sorted()
        #expect(files.contains("model.safetensors.index.json"))
        #expect(files.filter { $0.hasPrefix("model-0") }.count > 1)
        #expect(!files.contains("model.safetensors"))
        let loaded = try HFCheckpoint.load(directory: dir)
        #expect(loaded.parameters.flat.array == model.parameters.flat.array)
    }

    func savedDirectory(_ name: String) throws -> String {
        let model = try LlamaModel.initialized(config: Self.config, seed: 3)
        let dir = temporaryDirectory(name) + "/model"
        try HFCheckpoint.save(model, to: dir)
        return dir
    }

    @Test func truncatedFileNamesTheTensorAndOffset() throws {
        let dir = try savedDirectory("truncated")
        let path = dir + "/model.safetensors"
        let data = try Data(contentsOf: URL(fileURLWithPath: path))
        try data.prefix(data.count - 100).write(to: URL(fileURLWithPath: path))
        do {
            _ = try HFCheckpoint.load(directory: dir)
            Issue.record("a truncated checkpoint loaded")
        } catch let e as CheckpointError {
            guard case let .truncated(file, tensor, needed, available) = e else { Issue.record("wrong error \(e)"); return }
            #expect(file == "model.safetensors")
            #expect(tensor != nil)
            #expect(needed > available && available == data.count - 100)
            #expect(e.description.contains("truncated"))
        }
    }

    @Test func missingTensorIsNamed() throws {
        let dir = try savedDirectory("missing")
        let model = try HFCheckpoint.load(directory: dir)
        let kept = model.parameters.entries.filter { $0.name != "model.layers.1.mlp.up_proj.weight" }
        let tensors = kept.map { ($0.name, $0.shape, UnsafeBufferPointer(start: model.parameters.flat.pointer + $0.offset, count: $0.count)) }
        try SafetensorsWriter.write(path: dir + "/model.safetensors", tensors: tensors)
        #expect(throws: CheckpointError.missingTensor(directory: dir, tensor: "model.layers.1.mlp.up_proj.weight")) {
            try HFCheckpoint.load(directory: dir)
        }
    }

    @Test func wrongShapeIsNamed() throws {
        let dir = try savedDirectory("shape")
        var json = try String(contentsOfFile: dir + "/config.json", encoding: .utf8)
        json = json.replacingOccurrences(of: "\"intermediate_size\" : 24", with: "\"intermediate_size\" : 20")
        try json.write(toFile: dir + "/config.json", atomically: true, encoding: .utf8)
        #expect(throws: CheckpointError.shapeMismatch(file: "model.safetensors", tensor: "model.layers.0.mlp.gate_proj.weight",
                                                      expected: [20, 16], found: [24, 16])) {
            try HFCheckpoint.load(directory: dir)
        }
    }

    @Test func unsupportedDTypeIsNamed() throws {
        let dir = temporaryDirectory("dtype")
        // A file whose one tensor is int64.
        let header = #"{"model.embed_tokens.weight":{"dtype":"I64","shape":[1],"data_offsets":[0,8]}}"#
        var data = Data()
        var len = UInt64(header.utf8.count).littleEndian
        data.append(Data(bytes: &len, count: 8)); data.append(Data(header.utf8)); data.append(Data(count: 8))
        try data.write(to: URL(fileURLWithPath: dir + "/x.safetensors"))
        let reader = try SafetensorsReader(path: dir + "/x.safetensors")
        let out = UnsafeMutablePointer<Float>.allocate(capacity: 1)
        defer { out.deallocate() }
        #expect(throws: CheckpointError.unsupportedDType(file: "x.safetensors", tensor: "model.embed_tokens.weight", dtype: "I64")) {
            try reader.read("model.embed_tokens.weight", into: out, count: 1)
        }
    }

    @Test func garbageHeaderAndMissingFilesAreReported() throws {
        let dir = temporaryDirectory("garbage")
        try Data([1, 2, 3]).write(to: URL(fileURLWithPath: dir + "/short.safetensors"))
        #expect(throws: CheckpointError.truncated(file: "short.safetensors", tensor: nil, needed: 8, available: 3)) {
            try SafetensorsReader(path: dir + "/short.safetensors")
        }
        #expect(throws: CheckpointError.missingFile(dir + "/config.json")) { try HFCheckpoint.load(directory: dir) }
        try #"{"model_type": "llama", "hidden_size": 16}"#.write(toFile: dir + "/config.json", atomically: true, encoding: .utf8)
        do {
            _ = try HFCheckpoint.load(directory: dir)
            Issue.record("an incomplete config loaded")
        } catch let e as CheckpointError {
            #expect(e.description.contains("missing key intermediate_size"), "\(e)")
        }
        try #"{"model_type": "llama", "hidden_size": 16, "intermediate_size": 8, "num_hidden_layers": 1, "num_attention_heads": 2, "vocab_size": 8, "rope_scaling": {"type": "llama3", "factor": 8.0}}"#
            .write(toFile: dir + "/config.json", atomically: true, encoding: .utf8)
        do {
            _ = try HFCheckpoint.load(directory: dir)
            Issue.record("rope_scaling was accepted")
        } catch let e as CheckpointError {
            #expect(e.description.contains("rope_scaling"))
        }
    }
}

@Suite struct TokenFileTests {
    @Test(arguments: [[Int32(1), 2, 300], [Int32(70000), 5]])
    func roundTrip(tokens: [Int32]) throws {
        let path = temporaryDirectory("tok") + "/a.tokens"
        try TokenFile.write(tokens, to: path)
        #expect(TokenFile.isTokenFile(path))
        #expect(try TokenFile.read(path) == tokens)
    }

    @Test func corruptFilesGiveClearErrors() throws {
        let dir = temporaryDirectory("tokbad")
        try TokenFile.write([1, 2, 3, 4], to: dir + "/t.tokens")
        let data = try Data(contentsOf: URL(fileURLWithPath: dir + "/t.tokens"))
        try data.prefix(data.count - 1).write(to: URL(fileURLWithPath: dir + "/cut.tokens"))
        #expect(throws: TokenFileError.truncated(file: dir + "/cut.tokens", expectedBytes: 32, actualBytes: 31)) {
            try TokenFile.read(dir + "/cut.tokens")
        }
        #expect(throws: TokenFileError.tokenOutOfRange(file: dir + "/t.tokens", index: 3, token: 4, vocab: 4)) {
            try TokenFile.read(dir + "/t.tokens", vocab: 4)
        }
        var bad = data
        bad[8] = 9
        try bad.write(to: URL(fileURLWithPath: dir + "/v.tokens"))
        #expect(throws: TokenFileError.badHeader(file: dir + "/v.tokens", message: "version 9, expected 1")) {
            try TokenFile.read(dir + "/v.tokens")
        }
    }

    @Test func byteTokenizerRoundTrips() {
        let t = ByteTokenizer()
        let text = "Torus — ring attention"
        #expect(t.decode(t.encode(text)) == text)
        #expect(t.encode("A") == [65])
    }
}

@Suite struct ByteStreamDecoderTests {
    @Test func emitsCompleteCharactersAndEscapesGarbage() {
        var d = ByteStreamDecoder()
        let euro = Array("€".utf8).map(Int32.init)   // 3 bytes
        #expect(d.push(72) == "H")
        #expect(d.push(euro[0]) == "")
        #expect(d.push(euro[1]) == "")
        #expect(d.push(euro[2]) == "€")
        #expect(d.push(0xFF) == "\\xFF")
        #expect(d.push(0x01) == "\\x01")
        #expect(d.push(10) == "\n")
        #expect(d.push(0xE2) == "")
        #expect(d.push(65) == "\\xE2A")
        #expect(d.push(0xC3) == "")
        #expect(d.flush() == "\\xC3")
    }
}
