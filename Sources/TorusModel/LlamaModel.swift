import Foundation
import TorusTensor

/// A LLaMA-architecture decoder in fp32: weights in one `ParameterStore`, forward over a batch
/// of sequences, incremental forward with a `KVCache`, and an exact hand-written backward.
public final class LlamaModel: @unchecked Sendable {
    public let config: LlamaConfig
    /// All weights, in transformers order and names.
    public let parameters: ParameterStore
    /// Views of `parameters` by role.
    public let weights: LlamaTensors
    let rotary: RotaryTable
    let shape: AttentionShape
    /// Flat offset of the first held tensor of layer l or later (index L: the norm and head).
    let layerOffsets: [Int]

    /// The tensors this instance holds (the whole model unless it is one pipeline stage's).
    public let part: ModelPart
    /// bfloat16 copies of the dense layers' weights by the address of their fp32 weights, when
    /// `setInferencePrecision(.bfloat16)` made them (read-only during steps).
    var bfloat16Layers: [UnsafeRawPointer: BFloat16Linear] = [:]

    /// A model with all weights zero, holding only `part` when given (a pipeline stage keeps
    /// its own layers). Throws when the config is inconsistent.
    public init(config: LlamaConfig, part: ModelPart? = nil) throws {
        try config.validate()
        self.config = config
        let part = part ?? .whole(config)
        guard part.layerRanges.allSatisfy({ $0.lowerBound >= 0 && $0.upperBound <= config.numHiddenLayers }) else {
            throw ModelInputError.notHeld("model part \(part) is outside the model's \(config.numHiddenLayers) layers")
        }
        self.part = part
        self.parameters = ParameterStore(layout: LlamaTensors.layout(for: config).filter { part.holds($0.name, config: config) })
        self.weights = LlamaTensors(config: config, store: parameters)
        let store = parameters, layers = config.numHiddenLayers
        let positions = store.entries.map { ModelPart.position(of: $0.name, layers: layers) ?? layers }
        self.layerOffsets = (0...layers).map { l in
            positions.firstIndex { $0 >= l }.map { store.entries[$0].offset } ?? store.count
        }
        self.shape = config.attentionShape
        self.rotary = RotaryTable(headDim: config.resolvedHeadDim, theta: config.ropeTheta,
                                  capacity: min(config.maxPositionEmbeddings, 4096))
    }

    /// A freshly initialised model as transformers does it: linear and embedding weights
    /// normal(0, initializer_range), norm weights one. A `part` gets the same values as the
    /// whole model initialised from the same seed.
    public static func initialized(config: LlamaConfig, seed: UInt64, part: ModelPart? = nil) throws -> LlamaModel {
        let model = try LlamaModel(config: config, part: part)
        var rng = SeededGenerator(seed: seed)
        for (name, shape) in LlamaTensors.layout(for: config) {
            let held = model.parameters.entry(name) != nil
            if shape.count == 1 {
                if held { model.parameters.tensor(name).fill(1) }
                continue
            }
            // Tensors of other stages skip their draws, so the stream stays aligned.
            if held {
                model.parameters.tensor(name).fillNormal(std: Float(config.initializerRange), generator: &rng)
            } else {
                rng.skipNormals(shape.reduce(1, *))
            }
        }
        return model
    }

    /// Throws unless this instance holds every tensor (generation and evaluation need them all).
    public func requireWhole(for use: String) throws {
        guard part.isWhole(config) else {
            throw ModelInputError.notHeld("\(use) needs the whole model; this instance holds \(part)")
        }
    }

    /// A zero-filled store shaped like the parameters, for gradients.
    public func makeGradients() -> ParameterStore { parameters.zerosLike() }

    // MARK: - Batch forward and backward

    /// Logits [batch * seqLen, vocab] for every position of `batch` sequences of `seqLen` tokens.
    public func logits(tokens: [Int32], batch: Int, seqLen: Int) throws -> Tensor {
        let pass = try forward(tokens: tokens, batch: batch, seqLen: seqLen, keepActivations: false)
        guard let logits = pass.logitsIfComputed else { throw ModelInputError.shapeMismatch("the pass ran no head") }
        return logits
    }

    /// Mean cross-entropy of predicting `targets` (same layout as `tokens`;
    /// `CrossEntropy.ignoreIndex` skips a position). When `gradients` is given, adds the
    /// gradient of `lossScale * loss` to it. During backward, `gradientsReady(offset)` is called
    /// each time every gradient at flat offset `offset` and above is final (the head first, the
    /// embedding last), so reductions of those slices can start while backward continues. It is
    /// also called again with an offset already reported between the matrix products of a
    /// layer, so the caller can drive its transfers.
    @discardableResult
    public func loss(tokens: [Int32], targets: [Int32], batch: Int, seqLen: Int,
                     gradients: ParameterStore? = nil, lossScale: Float = 1,
                     gradientsReady: ((Int) -> Void)? = nil, attention: SequenceAttention? = nil) throws -> Float {
        guard targets.count == tokens.count else {
            throw ModelInputError.shapeMismatch("targets has \(targets.count) entries for \(tokens.count) tokens")
        }
        try checkTargets(targets)
        let pass = try forward(tokens: tokens, batch: batch, seqLen: seqLen, keepActivations: gradients != nil, attention: attention)
        guard let logits = pass.logitsIfComputed else { throw ModelInputError.shapeMismatch("the pass ran no head") }
        let rows = batch * seqLen
        let result = targets.withUnsafeBufferPointer { tp in
            CrossEntropy.forward(logits: logits.pointer, targets: tp.baseAddress!, rows: rows, vocab: config.vocabSize,
                                 dLogits: gradients == nil ? nil : logits.pointer, scale: lossScale)
        }
        if let gradients {
            try backward(pass: pass, dLogits: logits, gradients: LlamaTensors(config: config, store: gradients),
                         gradientsReady: gradientsReady, attention: attention)
        }
        withExtendedLifetime(logits) {}
        return result.mean
    }

    /// Saved tensors of one decoder layer's forward pass.
    /// One pipeline stage's forward pass over a micro-batch, kept for its backward.
    public struct StagePass {
        let pass: ForwardPass
        /// The hidden state this stage hands to the next one.
        public var output: Tensor { pass.output }
    }

    /// Forward of the decoder layers `layers` for one micro-batch: from the embedding of
    /// `tokens` when `input` is nil (first stage), else from the previous stage's output.
    /// The last stage (whose range ends at the last layer) also runs the norm and the head.
    public func stageForward(tokens: [Int32], input: Tensor?, batch: Int, seqLen: Int, layers: Range<Int>,
                             attention: SequenceAttention? = nil) throws -> StagePass {
        guard layers.lowerBound >= 0, layers.upperBound <= config.numHiddenLayers, !layers.isEmpty else {
            throw ModelInputError.shapeMismatch("stage layers \(layers) outside 0..<\(config.numHiddenLayers)")
        }
        let pass = try forward(tokens: tokens, batch: batch, seqLen: seqLen, keepActivations: true, attention: attention,
                               input: input, layers: layers, head: layers.upperBound == config.numHiddenLayers)
        return StagePass(pass: pass)
    }

    /// Backward of a stage. The last stage passes `targets` (its loss is computed here, scaled
    /// by `lossScale`, and returned); other stages pass `dOutput` from the next stage. Returns
    /// the loss (0 when not the last stage) and the gradient for the previous stage (nil on the
    /// first stage). `gradientsReady` is called as for `loss(...)`, with offsets into `gradients`.
    /// `dOutput` is consumed (used as scratch; the returned gradient may be the same memory).
    public func stageBackward(_ stage: StagePass, targets: [Int32]?, dOutput: Tensor?, gradients: ParameterStore,
                              lossScale: Float = 1, gradientsReady: ((Int) -> Void)? = nil,
                              attention: SequenceAttention? = nil) throws -> (loss: Float, dInput: Tensor?) {
        let pass = stage.pass
        let grads = LlamaTensors(config: config, store: gradients)
        if let targets, let logits = pass.logitsIfComputed {
            let rows = pass.batch * pass.seqLen
            guard targets.count == rows else { throw ModelInputError.shapeMismatch("targets has \(targets.count) entries for \(rows) rows") }
            try checkTargets(targets)
            let result = targets.withUnsafeBufferPointer { tp in
                CrossEntropy.forward(logits: logits.pointer, targets: tp.baseAddress!, rows: rows, vocab: config.vocabSize,
                                     dLogits: logits.pointer, scale: lossScale)
            }
            let dInput = try backward(pass: pass, dLogits: logits, gradients: grads, gradientsReady: gradientsReady, attention: attention)
            return (result.mean, dInput)
        }
        let dInput = try backward(pass: pass, dLogits: nil, dOutput: dOutput, gradients: grads, gradientsReady: gradientsReady,
                                  attention: attention)
        return (0, dInput)
    }

    struct LayerActivations {
        let x: Tensor, rstd1: Tensor, h1: Tensor, q: Tensor, k: Tensor, v: Tensor, o: Tensor, lse: Tensor
        let x2: Tensor, rstd2: Tensor, h2: Tensor, gate: Tensor, up: Tensor, act: Tensor
    }

    struct ForwardPass {
        let tokens: [Int32]
        let positions: [Int32]
        let batch: Int, seqLen: Int
        var layers: [LayerActivations]
        /// The decoder layers this pass ran (a pipeline stage runs a sub-range).
        let layerRange: Range<Int>
        /// Whether the pass started from the embedding (else from a previous stage's output).
        let embedded: Bool
        /// Hidden state after the last layer of the range.
        let output: Tensor
        /// Final norm and head, when the pass included them.
        let finalRstd: Tensor?, finalNormed: Tensor?
        let logitsIfComputed: Tensor?
    }

    func checkTokens(_ tokens: [Int32]) throws {
        for t in tokens where t < 0 || Int(t) >= config.vocabSize {
            throw ModelInputError.tokenOutOfRange(token: Int(t), vocab: config.vocabSize)
        }
    }

    /// Like `checkTokens`, allowing `CrossEntropy.ignoreIndex`.
    func checkTargets(_ targets: [Int32]) throws {
        try checkTokens(targets.filter { $0 != CrossEntropy.ignoreIndex })
    }

    /// `seqLen` rows of each of `batch` sequences; with `attention`, those rows are this rank's
    /// share of longer sequences, at the positions the attention method reports.
    func forward(tokens: [Int32], batch: Int, seqLen: Int, keepActivations: Bool,
                 attention: SequenceAttention? = nil, input: Tensor? = nil, layers range: Range<Int>? = nil,
                 head: Bool = true) throws -> ForwardPass {
        let range = range ?? 0..<config.numHiddenLayers
        guard part.covers(layers: range, embedded: input == nil, head: head) else {
            throw ModelInputError.notHeld("a pass over layers \(range.lowerBound)..<\(range.upperBound)"
                + (input == nil ? " from the embedding" : "") + (head ? " with the head" : "") + " needs tensors this rank does not hold (it holds \(part))")
        }
        guard batch > 0, seqLen > 0, tokens.count == batch * seqLen else {
            throw ModelInputError.shapeMismatch("\(tokens.count) tokens for batch \(batch) x sequence \(seqLen)")
        }
        try checkTokens(tokens)
        let local = attention?.localPositions ?? (0..<seqLen).map(Int32.init)
        guard local.count == seqLen else {
            throw ModelInputError.shapeMismatch("the attention method holds \(local.count) rows per sequence, the batch has \(seqLen)")
        }
        let longest = Int(local.max() ?? 0) + 1
        if longest > config.maxPositionEmbeddings {
            throw ModelInputError.sequenceTooLong(length: longest, limit: config.maxPositionEmbeddings)
        }
        rotary.ensure(capacity: longest)
        let rows = batch * seqLen
        let positions = (0..<rows).map { local[$0 % seqLen] }
        if let input, input.count != rows * config.hiddenSize {
            throw ModelInputError.shapeMismatch("stage input has \(input.count) values, expected \(rows) rows of \(config.hiddenSize)")
        }
        var x = input ?? embed(tokens)
        var saved: [LayerActivations] = []
        let shape = self.shape
        for w in weights.layers[range] {
            let acts = try positions.withUnsafeBufferPointer { pos in
                try layerForward(w, x: x, rows: rows, positions: pos.baseAddress!) { q, k, v, o, lse in
                    for b in 0..<batch {
                        let qo = b * seqLen * shape.queryWidth, ko = b * seqLen * shape.keyValueWidth
                        let lo = b * seqLen * shape.queryHeads
                        if let attention {
                            let r = try attention.forward(q: q.view(offset: qo, shape: [seqLen, shape.queryWidth]),
                                                          k: k.view(offset: ko, shape: [seqLen, shape.keyValueWidth]),
                                                          v: v.view(offset: ko, shape: [seqLen, shape.keyValueWidth]))
                            (o.pointer + qo).update(from: r.out.pointer, count: r.out.count)
                            (lse.pointer + lo).update(from: r.lse.pointer, count: r.lse.count)
                        } else {
                            BlockAttention.forward(q: q.pointer + qo, k: k.pointer + ko, v: v.pointer + ko,
                                                   queryCount: seqLen, keyCount: seqLen, shape: shape,
                                                   mask: AttentionMask(causal: true), out: o.pointer + qo, lse: lse.pointer + lo)
                        }
                    }
                }
            }
            if keepActivations { saved.append(acts.saved) }
            x = acts.out
        }
        guard head else {
            return ForwardPass(tokens: tokens, positions: positions, batch: batch, seqLen: seqLen, layers: saved, layerRange: range,
                               embedded: input == nil, output: x, finalRstd: nil, finalNormed: nil, logitsIfComputed: nil)
        }
        let (logits, normed, rstd) = headLogits(x, rows: rows)
        return ForwardPass(tokens: tokens, positions: positions, batch: batch, seqLen: seqLen, layers: saved, layerRange: range,
                           embedded: input == nil, output: x, finalRstd: rstd, finalNormed: normed, logitsIfComputed: logits)
    }

    /// The embedding rows of `tokens`, into `x` when given (at least `tokens.count` rows).
    func embed(_ tokens: [Int32], into x: Tensor? = nil) -> Tensor {
        let d = config.hiddenSize
        let x = x ?? Tensor(zeros: [tokens.count, d])
        for (r, t) in tokens.enumerated() {
            (x.pointer + r * d).update(from: weights.embed.pointer + Int(t) * d, count: d)
        }
        return x
    }

    /// Logits [rows, vocab] of the hidden states `x` [rows, d] (the final norm, then the head),
    /// with the normed rows and their rstd for backward. Writes into the given buffers when
    /// passed (at least `rows` rows each), else into fresh ones.
    func headLogits(_ x: Tensor, rows: Int, normed: Tensor? = nil, rstd: Tensor? = nil, logits: Tensor? = nil)
        -> (logits: Tensor, normed: Tensor, rstd: Tensor) {
        let normed = normed ?? Tensor(zeros: [rows, config.hiddenSize])
        let rstd = rstd ?? Tensor(zeros: [rows])
        RMSNorm.forward(x: x.pointer, weight: weights.finalNorm.pointer, y: normed.pointer, rstd: rstd.pointer,
                        rows: rows, dim: config.hiddenSize, eps: Float(config.rmsNormEps))
        let logits = logits ?? Tensor(zeros: [rows, config.vocabSize])
        project(normed.pointer, weights.lmHead, logits.pointer, rows: rows, inFeatures: config.hiddenSize, outFeatures: config.vocabSize)
        return (logits, normed, rstd)
    }

    /// One decoder layer over `rows` rows of `x`, written into `b` (fresh buffers when nil);
    /// the output is `b.out`. `attend(q, k, v, out, lse)` fills the attention output for the
    /// rotated projections of these rows (the caller decides which keys each row sees).
    func layerForward(_ w: LlamaLayerTensors, x: Tensor, rows: Int, positions: UnsafePointer<Int32>, into b: LayerBuffers? = nil,
                      attend: (_ q: Tensor, _ k: Tensor, _ v: Tensor, _ out: Tensor, _ lse: Tensor) throws -> Void) rethrows
        -> (out: Tensor, saved: LayerActivations) {
        let b = b ?? LayerBuffers(rows: rows, config: config)
        layerProjections(w, x: x, rows: rows, positions: positions, into: b)
        try attend(b.q, b.k, b.v, b.o, b.lse)
        layerOutput(w, x: x, rows: rows, into: b)
        return (b.out, LayerActivations(x: x, rstd1: b.rstd1, h1: b.h1, q: b.q, k: b.k, v: b.v, o: b.o, lse: b.lse,
                                        x2: b.x2, rstd2: b.rstd2, h2: b.h2, gate: b.gate, up: b.up, act: b.act))
    }

    /// The first half of a decoder layer: input norm, then rotated Q, K and V of `rows` rows of
    /// `x` into `b.q`, `b.k`, `b.v`.
    func layerProjections(_ w: LlamaLayerTensors, x: Tensor, rows: Int, positions: UnsafePointer<Int32>, into b: LayerBuffers) {
        let d = config.hiddenSize, eps = Float(config.rmsNormEps)
        RMSNorm.forward(x: x.pointer, weight: w.inputNorm.pointer, y: b.h1.pointer, rstd: b.rstd1.pointer, rows: rows, dim: d, eps: eps)
        project(b.h1.pointer, [(w.q, b.q.pointer), (w.k, b.k.pointer), (w.v, b.v.pointer)], rows: rows, inFeatures: d)
        rotary.apply(b.q.pointer, rows: rows, heads: shape.queryHeads, positions: positions)
        rotary.apply(b.k.pointer, rows: rows, heads: shape.keyValueHeads, positions: positions)
    }

    /// The second half of a decoder layer, after attention filled `b.o`: output projection
    /// added to the residual `x`, post-attention norm and MLP, into `b.out` (which may be `x`).
    func layerOutput(_ w: LlamaLayerTensors, x: Tensor, rows: Int, into b: LayerBuffers) {
        let d = config.hiddenSize, f = config.intermediateSize, eps = Float(config.rmsNormEps)
        let qw = shape.queryWidth
        b.x2.pointer.update(from: x.pointer, count: rows * d)
        project(b.o.pointer, w.o, b.x2.pointer, rows: rows, inFeatures: qw, outFeatures: d, accumulate: true)
        RMSNorm.forward(x: b.x2.pointer, weight: w.postNorm.pointer, y: b.h2.pointer, rstd: b.rstd2.pointer, rows: rows, dim: d, eps: eps)
        project(b.h2.pointer, [(w.gate, b.gate.pointer), (w.up, b.up.pointer)], rows: rows, inFeatures: d)
        SwiGLU.forward(gate: b.gate.pointer, up: b.up.pointer, out: b.act.pointer, count: rows * f)
        // x may be the previous layer's `out` (serving reuses one set of buffers): it is not read past x2.
        b.out.pointer.update(from: b.x2.pointer, count: rows * d)
        project(b.act.pointer, w.down, b.out.pointer, rows: rows, inFeatures: f, outFeatures: d, accumulate: true)
    }

    /// Flat offset of the first tensor of layer `l` (or of the final norm for `l == layers`).
    func layerOffset(_ l: Int) -> Int { layerOffsets[l] }

    /// Backward of `pass`: from `dLogits` when the pass included the head, else from
    /// `dOutput` (the gradient of the pass's output, from the next pipeline stage). Returns the
    /// gradient of the pass's input when it did not start from the embedding.
    @discardableResult
    func backward(pass: ForwardPass, dLogits: Tensor?, dOutput: Tensor? = nil, gradients g: LlamaTensors,
                  gradientsReady: ((Int) -> Void)? = nil, attention: SequenceAttention? = nil) throws -> Tensor? {
        let d = config.hiddenSize, f = config.intermediateSize, v = config.vocabSize
        let qw = shape.queryWidth, kw = shape.keyValueWidth
        let rows = pass.batch * pass.seqLen, seqLen = pass.seqLen
        let dx: Tensor
        if let dLogits, let normed = pass.finalNormed, let rstd = pass.finalRstd {
            let dNormed = Tensor(zeros: [rows, d])
            Linear.backward(x: normed.pointer, weight: weights.lmHead.pointer, dy: dLogits.pointer,
                            dx: dNormed.pointer, dWeight: g.lmHead.pointer, rows: rows, inFeatures: d, outFeatures: v)
            dx = Tensor(zeros: [rows, d])
            RMSNorm.backward(x: pass.output.pointer, weight: weights.finalNorm.pointer, rstd: rstd.pointer,
                             dy: dNormed.pointer, dx: dx.pointer, dWeight: g.finalNorm.pointer, rows: rows, dim: d)
            withExtendedLifetime(dNormed) {}
            // With tied embeddings the head's gradient lives in the embedding, which finishes last.
            gradientsReady?(layerOffset(config.numHiddenLayers))
        } else if let dOutput, dOutput.count == rows * d {
            dx = dOutput   // consumed: it becomes the running gradient (and the returned dInput)
        } else {
            throw ModelInputError.shapeMismatch("backward needs the logits' gradient or a \(rows) x \(d) output gradient")
        }
        let dAct = Tensor(zeros: [rows, f]), dGate = Tensor(zeros: [rows, f]), dUp = Tensor(zeros: [rows, f])
        let dH = Tensor(zeros: [rows, d]), dO = Tensor(zeros: [rows, qw]), rowDot = Tensor(zeros: [rows, shape.queryHeads])
        let dq = Tensor(zeros: [rows, qw]), dk = Tensor(zeros: [rows, kw]), dv = Tensor(zeros: [rows, kw])
        try pass.positions.withUnsafeBufferPointer { posBuffer in
            let positions = posBuffer.baseAddress!
            for l in pass.layerRange.reversed() {
                let a = pass.layers[l - pass.layerRange.lowerBound], w = weights.layers[l], gw = g.layers[l]
                // Re-reporting what is already final lets the caller poll its transfers mid-layer.
                let above = gradientsReady == nil ? 0 : layerOffset(l + 1)
                // x3 = x2 + down(act): dx is dx3 and flows into dx2 unchanged.
                Linear.backward(x: a.act.pointer, weight: w.down.pointer, dy: dx.pointer, dx: dAct.pointer,
                                dWeight: gw.down.pointer, rows: rows, inFeatures: f, outFeatures: d)
                gradientsReady?(above)
                SwiGLU.backward(gate: a.gate.pointer, up: a.up.pointer, dOut: dAct.pointer, dGate: dGate.pointer,
                                dUp: dUp.pointer, count: rows * f)
                Linear.backward(x: a.h2.pointer, weight: w.gate.pointer, dy: dGate.pointer, dx: dH.pointer,
                                dWeight: gw.gate.pointer, rows: rows, inFeatures: d, outFeatures: f)
                gradientsReady?(above)
                Linear.backward(x: a.h2.pointer, weight: w.up.pointer, dy: dUp.pointer, dx: dH.pointer,
                                dWeight: gw.up.pointer, rows: rows, inFeatures: d, outFeatures: f, accumulateInput: true)
                gradientsReady?(above)
                RMSNorm.backward(x: a.x2.pointer, weight: w.postNorm.pointer, rstd: a.rstd2.pointer, dy: dH.pointer,
                                 dx: dx.pointer, dWeight: gw.postNorm.pointer, rows: rows, dim: d, accumulate: true)
                // x2 = x + o_proj(o)
                Linear.backward(x: a.o.pointer, weight: w.o.pointer, dy: dx.pointer, dx: dO.pointer,
                                dWeight: gw.o.pointer, rows: rows, inFeatures: qw, outFeatures: d)
                gradientsReady?(above)
                if attention == nil {
                    BlockAttention.rowDot(dOut: dO.pointer, out: a.o.pointer, rows: rows, shape: shape, result: rowDot.pointer)
                }
                // The kernel accumulates; a sequence-parallel method's results are copied in whole.
                if attention == nil { dq.fill(0); dk.fill(0); dv.fill(0) }
                for b in 0..<pass.batch {
                    let qo = b * seqLen * qw, ko = b * seqLen * kw, lo = b * seqLen * shape.queryHeads
                    if let attention {
                        let r = try attention.backward(q: a.q.view(offset: qo, shape: [seqLen, qw]),
                                                       k: a.k.view(offset: ko, shape: [seqLen, kw]),
                                                       v: a.v.view(offset: ko, shape: [seqLen, kw]),
                                                       out: a.o.view(offset: qo, shape: [seqLen, qw]),
                                                       lse: a.lse.view(offset: lo, shape: [seqLen, shape.queryHeads]),
                                                       dOut: dO.view(offset: qo, shape: [seqLen, qw]))
                        (dq.pointer + qo).update(from: r.dq.pointer, count: r.dq.count)
                        (dk.pointer + ko).update(from: r.dk.pointer, count: r.dk.count)
                        (dv.pointer + ko).update(from: r.dv.pointer, count: r.dv.count)
                        continue
                    }
                    BlockAttention.backward(q: a.q.pointer + qo, k: a.k.pointer + ko, v: a.v.pointer + ko,
                                            dOut: dO.pointer + qo, lse: a.lse.pointer + lo, rowDot: rowDot.pointer + lo,
                                            queryCount: seqLen, keyCount: seqLen, shape: shape, mask: AttentionMask(causal: true),
                                            dq: dq.pointer + qo, dk: dk.pointer + ko, dv: dv.pointer + ko)
                }
                gradientsReady?(above)
                rotary.apply(dq.pointer, rows: rows, heads: shape.queryHeads, positions: positions, inverse: true)
                rotary.apply(dk.pointer, rows: rows, heads: shape.keyValueHeads, positions: positions, inverse: true)
                Linear.backward(x: a.h1.pointer, weight: w.q.pointer, dy: dq.pointer, dx: dH.pointer,
                                dWeight: gw.q.pointer, rows: rows, inFeatures: d, outFeatures: qw)
                gradientsReady?(above)
                Linear.backward(x: a.h1.pointer, weight: w.k.pointer, dy: dk.pointer, dx: dH.pointer,
                                dWeight: gw.k.pointer, rows: rows, inFeatures: d, outFeatures: kw, accumulateInput: true)
                Linear.backward(x: a.h1.pointer, weight: w.v.pointer, dy: dv.pointer, dx: dH.pointer,
                                dWeight: gw.v.pointer, rows: rows, inFeatures: d, outFeatures: kw, accumulateInput: true)
                RMSNorm.backward(x: a.x.pointer, weight: w.inputNorm.pointer, rstd: a.rstd1.pointer, dy: dH.pointer,
                                 dx: dx.pointer, dWeight: gw.inputNorm.pointer, rows: rows, dim: d, accumulate: true)
                gradientsReady?(layerOffset(l))
            }
        }
        // Scratch tensors are used through raw pointers; keep them alive to the end.
        defer { withExtendedLifetime((dx, dAct, dGate, dUp, dH, dO, rowDot, dq, dk, dv)) {} }
        guard pass.embedded else { return dx }
        for (r, t) in pass.tokens.enumerated() {
            VectorMath.add(dx.pointer + r * d, into: g.embed.pointer + Int(t) * d, count: d)
        }
        gradientsReady?(0)
        return nil
    }
}

/// Causal self-attention over the rows of one sequence that this rank holds, computed with
/// other ranks when the sequence is split (sequence parallelism).
public protocol SequenceAttention: AnyObject {
    /// Global positions of the local rows of one sequence, in local order.
    var localPositions: [Int32] { get }
    /// Output [rows, Hq*d] and log-sum-exp [rows, Hq] of the local queries against the sequence.
    func forward(q: Tensor, k: Tensor, v: Tensor) throws -> (out: Tensor, lse: Tensor)
    /// Gradients of the local q, k, v given the final output, lse and output gradient.
    func backward(q: Tensor, k: Tensor, v: Tensor, out: Tensor, lse: Tensor, dOut: Tensor) throws -> (dq: Tensor, dk: Tensor, dv: Tensor)
}

/// Bad input to a model call, naming what was expected.
public enum ModelInputError: Error, CustomStringConvertible, Equatable {
    case tokenOutOfRange(token: Int, vocab: Int)
    case shapeMismatch(String)
    case sequenceTooLong(length: Int, limit: Int)
    case notHeld(String)

    public var description: String {
        switch self {
        case let .tokenOutOfRange(token, vocab): return "token id \(token) is outside the vocabulary [0, \(vocab))"
        case let .shapeMismatch(message): return "input shape mismatch: \(message)"
        case let .sequenceTooLong(length, limit): return "sequence of \(length) tokens exceeds max_position_embeddings \(limit)"
        case let .notHeld(message): return message
        }
    }
}
