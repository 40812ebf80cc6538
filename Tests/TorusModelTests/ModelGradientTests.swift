import Foundation
import Testing
import TorusModel
import TorusTensor

struct TinyCase: CustomTestStringConvertible, Sendable {
    let kvHeads: Int
    let tied: Bool
    var testDescription: String { "kv_heads=\(kvHeads) tied=\(tied)" }
    var config: LlamaConfig {
        LlamaConfig(hiddenSize: 8, intermediateSize: 12, numHiddenLayers: 2, numAttentionHeads: 2, numKeyValueHeads: kvHeads,
                    rmsNormEps: 1e-5, ropeTheta: 100, vocabSize: 11, tieWordEmbeddings: tied, maxPositionEmbeddings: 16,
                    initializerRange: 0.5)
    }
}

@Suite struct ModelGradientTests {
    static let cases = [TinyCase(kvHeads: 2, tied: false), TinyCase(kvHeads: 1, tied: false), TinyCase(kvHeads: 1, tied: true)]

    /// The whole model's loss against the Double reference, and every parameter's gradient
    /// against central differences of the Double reference.
    @Test(arguments: cases)
    func gradientsMatchFiniteDifferences(_ c: TinyCase) throws {
        let model = try LlamaModel.initialized(config: c.config, seed: 3)
        let batch = 2, seqLen = 5
        var g = SeededGenerator(seed: 9)
        let tokens = (0..<(batch * seqLen)).map { _ in Int32(g.next() % 11) }
        let targets = (0..<(batch * seqLen)).map { _ in Int32(g.next() % 11) }
        let grads = model.makeGradients()
        let loss = try model.loss(tokens: tokens, targets: targets, batch: batch, seqLen: seqLen, gradients: grads)
        let ref = ReferenceLlama(model: model)
        let p = model.parameters.flat.array.map(Double.init)
        let refLoss = ref.loss(p, tokens: tokens, targets: targets, batch: batch, seqLen: seqLen)
        #expect(abs(Double(loss) - refLoss) < 1e-5 * max(1, refLoss))
        let fd = numericGradient(p, eps: 1e-5) { ref.loss($0, tokens: tokens, targets: targets, batch: batch, seqLen: seqLen) }
        // Per tensor, so a failure names the tensor.
        for e in model.parameters.entries {
            let analytic = Array(grads.flat.array[e.offset..<(e.offset + e.count)])
            let numeric = Array(fd[e.offset..<(e.offset + e.count)])
            let err = zip(analytic, numeric).map { abs(Double($0) - $1) }.max() ?? 0
            let scale = max(numeric.map(abs).max() ?? 0, 1e-2)
            #expect(err / scale < 2e-3, "gradient of \(e.name): max error \(err), scale \(scale)")
        }
    }

    @Test func lossFallsUnderGradientDescent() throws {
        let model = try LlamaModel.initialized(config: TinyCase(kvHeads: 1, tied: false).config, seed: 5)
        let tokens: [Int32] = [1, 2, 3, 4, 5, 6, 7, 8], targets: [Int32] = [2, 3, 4, 5, 6, 7, 8, 9]
        let grads = model.makeGradients()
        let first = try model.loss(tokens: tokens, targets: targets, batch: 1, seqLen: 8)
        for _ in 0..<30 {
            grads.flat.fill(0)
            try model.loss(tokens: tokens, targets: targets, batch: 1, seqLen: 8, gradients: grads)
            for i in 0..<model.parameters.count { model.parameters.flat[i] -= 0.1 * grads.flat[i] }
        }
        let last = try model.loss(tokens: tokens, targets: targets, batch: 1, seqLen: 8)
        #expect(last < first * 0.5, "loss went from \(first) to \(last)")
    }

    @Test func badTokensAreRejected() throws {
        let model = try LlamaModel.initialized(config: TinyCase(kvHeads: 1, tied: false).config, seed: 5)
        #expect(throws: ModelInputError.tokenOutOfRange(token: 11, vocab: 11)) {
            try model.logits(tokens: [1, 11], batch: 1, seqLen: 2)
        }
        #expect(throws: ModelInputError.self) { try model.logits(tokens: [1, 2, 3], batch: 2, seqLen: 2) }
        #expect(throws: ModelInputError.sequenceTooLong(length: 17, limit: 16)) {
            try model.logits(tokens: [Int32](repeating: 1, count: 17), batch: 1, seqLen: 17)
        }
    }

    func numericGradient(_ x: [Double], eps: Double, _ f: ([Double]) -> Double) -> [Double] {
        var x = x
        return (0..<x.count).map { i in
            let old = x[i]
            x[i] = old + eps; let fp = f(x)
            x[i] = old - eps; let fm = f(x)
            x[i] = old
            return (fp - fm) / (2 * eps)
        }
    }
}

@Suite struct KVCacheTests {
    @Test(arguments: [1, 2])
    func incrementalLogitsEqualFullForward(kvHeads: Int) throws {
        let config = LlamaConfig(hiddenSize: 16, intermediateSize: 24, numHiddenLayers: 2, numAttentionHeads: 4,
                                 numKeyValueHeads: kvHeads, vocabSize: 32, maxPositionEmbeddings: 64)
        let model = try LlamaModel.initialized(config: config, seed: 11)
        let tokens: [Int32] = [3, 1, 4, 1, 5, 9, 2, 6, 5, 3]
        let full = try model.logits(tokens: tokens, batch: 1, seqLen: tokens.count).array
        let cache = KVCache(config: config, capacity: 16)
        var incremental = try model.forward(tokens: Array(tokens[0..<4]), cache: cache).array
        for t in tokens[4...] { incremental += try model.forward(tokens: [t], cache: cache).array }
        #expect(cache.length == tokens.count)
        let err = zip(full, incremental).map { abs($0 - $1) }.max() ?? 0
        #expect(err < 1e-5, "max logit difference \(err)")
    }

    @Test func greedyGenerationIsDeterministicAndSamplingFollowsSeed() throws {
        let config = LlamaConfig(hiddenSize: 16, intermediateSize: 24, numHiddenLayers: 1, numAttentionHeads: 2,
                                 vocabSize: 32, maxPositionEmbeddings: 64)
        let model = try LlamaModel.initialized(config: config, seed: 12)
        let a = try model.generate(prompt: [1, 2, 3], maxNewTokens: 8)
        let b = try model.generate(prompt: [1, 2, 3], maxNewTokens: 8)
        #expect(a == b && a.count == 8)
        // Greedy continuation equals arg-max of the full forward at each step.
        var seq: [Int32] = [1, 2, 3]
        for _ in 0..<8 {
            let lg = try model.logits(tokens: seq, batch: 1, seqLen: seq.count).array
            let last = Array(lg[((seq.count - 1) * 32)...])
            seq.append(Int32(last.indices.max { last[$0] < last[$1] }!))
        }
        #expect(Array(seq[3...]) == a)
        let s1 = try model.generate(prompt: [1, 2, 3], maxNewTokens: 8, options: .init(temperature: 1.5, topP: 0.9, seed: 4))
        let s2 = try model.generate(prompt: [1, 2, 3], maxNewTokens: 8, options: .init(temperature: 1.5, topP: 0.9, seed: 4))
        #expect(s1 == s2)
    }
}

@Suite struct StageTests {
    /// Running the layers as pipeline stages (forward stage by stage, backward in reverse,
    /// hidden states and their gradients handed over) gives the full model's loss and gradients.
    @Test(arguments: [false, true])
    func stagesComposeToTheWholeModel(tied: Bool) throws {
        let config = LlamaConfig(hiddenSize: 16, intermediateSize: 24, numHiddenLayers: 3, numAttentionHeads: 4,
                                 numKeyValueHeads: 2, vocabSize: 32, tieWordEmbeddings: tied, maxPositionEmbeddings: 32)
        let model = try LlamaModel.initialized(config: config, seed: 8)
        let tokens: [Int32] = [1, 5, 7, 2, 9, 3, 3, 8, 30, 4], targets: [Int32] = [5, 7, 2, 9, 3, 3, 8, 30, 4, 1]
        let full = model.makeGradients()
        let loss = try model.loss(tokens: tokens, targets: targets, batch: 2, seqLen: 5, gradients: full)
        let staged = model.makeGradients()
        let s0 = try model.stageForward(tokens: tokens, input: nil, batch: 2, seqLen: 5, layers: 0..<1)
        let s1 = try model.stageForward(tokens: tokens, input: s0.output, batch: 2, seqLen: 5, layers: 1..<3)
        let (l1, d1) = try model.stageBackward(s1, targets: targets, dOutput: nil, gradients: staged)
        let (_, d0) = try model.stageBackward(s0, targets: nil, dOutput: d1, gradients: staged)
        #expect(d0 == nil)
        #expect(abs(l1 - loss) < 1e-6)
        let err = zip(full.flat.array, staged.flat.array).map { abs($0 - $1) }.max() ?? .infinity
        #expect(err < 1e-6, "gradients differ by \(err)")
    }

    /// Stage-local models (each holding only its part) start from the whole model's values,
    /// compose to its loss and gradients (a tied embedding's two contributions add up), and
    /// refuse passes over tensors they do not hold.
    @Test(arguments: [false, true])
    func stageLocalModelsComposeToTheWholeModel(tied: Bool) throws {
        let config = LlamaConfig(hiddenSize: 16, intermediateSize: 24, numHiddenLayers: 3, numAttentionHeads: 4,
                                 numKeyValueHeads: 2, vocabSize: 32, tieWordEmbeddings: tied, maxPositionEmbeddings: 32)
        let whole = try LlamaModel.initialized(config: config, seed: 8)
        let parts = [ModelPart.stage(layers: 0..<1, of: config), .stage(layers: 1..<3, of: config)]
        let stages = try parts.map { try LlamaModel.initialized(config: config, seed: 8, part: $0) }
        #expect(stages[0].parameters.entry("model.layers.1.mlp.up_proj.weight") == nil)
        #expect((stages[1].parameters.entry("model.embed_tokens.weight") != nil) == tied)
        #expect(stages[0].parameters.count + stages[1].parameters.count
                == whole.parameters.count + (tied ? config.vocabSize * config.hiddenSize : 0))
        for stage in stages {
            for e in stage.parameters.entries {
                #expect(stage.parameters.tensor(e.name).array == whole.parameters.tensor(e.name).array, "\(e.name)")
            }
        }
        let tokens: [Int32] = [1, 5, 7, 2, 9, 3, 3, 8, 30, 4], targets: [Int32] = [5, 7, 2, 9, 3, 3, 8, 30, 4, 1]
        let full = whole.makeGradients()
        let loss = try whole.loss(tokens: tokens, targets: targets, batch: 2, seqLen: 5, gradients: full)
        let grads = stages.map { $0.makeGradients() }
        let s0 = try stages[0].stageForward(tokens: tokens, input: nil, batch: 2, seqLen: 5, layers: 0..<1)
        let s1 = try stages[1].stageForward(tokens: tokens, input: s0.output, batch: 2, seqLen: 5, layers: 1..<3)
        let (l1, d1) = try stages[1].stageBackward(s1, targets: targets, dOutput: nil, gradients: grads[1])
        _ = try stages[0].stageBackward(s0, targets: nil, dOutput: d1, gradients: grads[0])
        #expect(abs(l1 - loss) < 1e-6)
        for e in full.entries {
            let held = grads.filter { $0.entry(e.name) != nil }.map { $0.tensor(e.name).array }
            let sum = held.dropFirst().reduce(held[0]) { zip($0, $1).map { $0 + $1 } }
            let err = zip(full.tensor(e.name).array, sum).map { abs($0 - $1) }.max() ?? .infinity
            #expect(err < 1e-6, "\(e.name): gradients differ by \(err)")
        }
        #expect(throws: ModelInputError.self) {
            try stages[0].stageForward(tokens: tokens, input: nil, batch: 2, seqLen: 5, layers: 0..<2)
        }
        do {
            _ = try stages[1].generate(prompt: [1, 2], maxNewTokens: 1)
            Issue.record("generation on a stage-local model should be refused")
        } catch let error as ModelInputError {
            #expect("\(error)".contains("needs the whole model; this instance holds decoder layers 1..<3, norm and head"), "\(error)")
        }
    }
}

