import Foundation
import Testing
import TorusModel

/// Python with torch and transformers, from `TORUS_PYTHON` (default `python3`), or nil.
enum ParityPython {
    static let executable: String? = {
        let python = ProcessInfo.processInfo.environment["TORUS_PYTHON"] ?? "python3"
        let result = try? ParityPython.run(python, ["-c", "import torch, transformers, safetensors"], input: nil)
        return result?.status == 0 ? python : nil
    }()

    static let skipMessage = "transformers parity skipped: set TORUS_PYTHON to a Python with torch, transformers and safetensors"

    static var script: String {
        URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
            .appendingPathComponent("parity/hf_parity.py").path
    }

    static func run(_ exe: String, _ args: [String], input: Data?) throws -> (status: Int32, stdout: Data, stderr: String) {
        let p = Process()
        p.executableURL = URL(fileURLWithPath: "/usr/bin/env")
        p.arguments = [exe] + args
        let out = Pipe(), err = Pipe(), inp = Pipe()
        p.standardOutput = out; p.standardError = err; p.standardInput = inp
        try p.run()
        if let input { inp.fileHandleForWriting.write(input) }
        try inp.fileHandleForWriting.close()
        let o = out.fileHandleForReading.readDataToEndOfFile()
        let e = err.fileHandleForReading.readDataToEndOfFile()
        p.waitUntilExit()
        return (p.terminationStatus, o, String(decoding: e, as: UTF8.self))
    }

    /// transformers' logits and loss for a model directory.
    static func reference(directory: String, tokens: [Int32], targets: [Int32]) throws -> (logits: [Float], loss: Float) {
        let python = try #require(executable)
        let request = try JSONSerialization.data(withJSONObject: ["tokens": tokens.map(Int.init), "targets": targets.map(Int.init)])
        let r = try run(python, [script, "run", directory], input: request)
        try #require(r.status == 0, "hf_parity.py run failed: \(r.stderr)")
        let obj = try #require(try JSONSerialization.jsonObject(with: r.stdout) as? [String: Any])
        let logits = try #require(obj["logits"] as? [Double]).map(Float.init)
        let loss = Float(try #require(obj["loss"] as? Double))
        return (logits, loss)
    }
}

@Suite(.enabled(if: ParityPython.executable != nil, Comment(rawValue: ParityPython.skipMessage)))
struct TransformersParityTests {
    let tokens: [Int32] = [72, 101, 108, 108, 111, 44, 32, 116, 111, 114, 117, 115, 33, 250, 299, 0]
    var inputs: [Int32] { Array(tokens.dropLast()) }
    var targets: [Int32] { Array(tokens.dropFirst()) }

    func compare(_ model: LlamaModel, _ reference: (logits: [Float], loss: Float)) throws {
        let logits = try model.logits(tokens: inputs, batch: 1, seqLen: inputs.count).array
        #expect(logits.count == reference.logits.count)
        let err = zip(logits, reference.logits).map { abs($0 - $1) }.max() ?? .infinity
        #expect(err < 1e-4, "max logit difference \(err)")
        let loss = try model.loss(tokens: inputs, targets: targets, batch: 1, seqLen: inputs.count)
        #expect(abs(loss - reference.loss) < 1e-5, "loss \(loss) vs transformers \(reference.loss)")
    }

    @Test(arguments: [(4, false), (2, false), (1, true)])
    func torusLoadsWhatTransformersWrote(kvHeads: Int, tied: Bool) throws {
        let python = try #require(ParityPython.executable)
        let dir = temporaryDirectory("hf-made") + "/model"
        let made = try ParityPython.run(python, [ParityPython.script, "make", dir, "7", String(kvHeads), tied ? "1" : "0"], input: nil)
        try #require(made.status == 0, "hf_parity.py make failed: \(made.stderr)")
        let model = try HFCheckpoint.load(directory: dir)
        #expect(model.config.numKeyValueHeads == kvHeads && model.config.tieWordEmbeddings == tied)
        try compare(model, try ParityPython.reference(directory: dir, tokens: inputs, targets: targets))
    }

    @Test(arguments: [false, true])
    func transformersLoadsWhatTorusWrote(tied: Bool) throws {
        let config = LlamaConfig(hiddenSize: 32, intermediateSize: 48, numHiddenLayers: 2, numAttentionHeads: 4,
                                 numKeyValueHeads: 2, rmsNormEps: 1e-5, ropeTheta: 500000, vocabSize: 300,
                                 tieWordEmbeddings: tied, maxPositionEmbeddings: 64)
        let model = try LlamaModel.initialized(config: config, seed: 21)
        for e in model.parameters.entries where e.shape.count == 1 {
            for i in 0..<e.count { model.parameters.flat[e.offset + i] = 1 + 0.01 * Float(i % 17) }
        }
        let dir = temporaryDirectory("torus-made") + "/model"
        try HFCheckpoint.save(model, to: dir, maxShardBytes: tied ? 1 << 30 : 50_000)
        try compare(model, try ParityPython.reference(directory: dir, tokens: inputs, targets: targets))
    }
}
