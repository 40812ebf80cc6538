import TorusTensor

/// Activation memory for batched steps of up to `rowCapacity` rows, of which up to
/// `logitCapacity` get logits. Allocated once; a step uses views of its first rows, so a
/// serving loop allocates no activation memory per step. One workspace serves one thread.
public final class StepWorkspace: @unchecked Sendable {
    public let rowCapacity: Int
    public let logitCapacity: Int
    let layer: LayerBuffers
    let hidden: Tensor       // [rows, d]  embeddings, then the residual stream
    let picked: Tensor       // [logit rows, d]  the rows whose logits are wanted
    let normed: Tensor       // [logit rows, d]
    let rstd: Tensor         // [logit rows]
    let logits: Tensor       // [logit rows, vocab]

    public init(config: LlamaConfig, rowCapacity: Int, logitCapacity: Int) {
        precondition(rowCapacity > 0 && logitCapacity > 0, "a step workspace needs room for at least one row")
        self.rowCapacity = rowCapacity
        self.logitCapacity = logitCapacity
        let d = config.hiddenSize
        layer = LayerBuffers(rows: rowCapacity, config: config)
        hidden = Tensor(zeros: [rowCapacity, d])
        picked = Tensor(zeros: [logitCapacity, d])
        normed = Tensor(zeros: [logitCapacity, d])
        rstd = Tensor(zeros: [logitCapacity])
        logits = Tensor(zeros: [logitCapacity, config.vocabSize])
    }

    /// Bytes held by the workspace.
    public var bytes: Int {
        let l = layer
        let counts = [l.rstd1, l.h1, l.q, l.k, l.v, l.o, l.lse, l.x2, l.rstd2, l.h2, l.gate, l.up, l.act, l.out,
                      hidden, picked, normed, rstd, logits].map(\.count)
        return counts.reduce(0, +) * 4
    }
}

/// Attention of one batched step's rows for one layer: given the rotated `q`, `k`, `v` of
/// every row, store the keys and values where the caller keeps its cache and write each row's
/// output and log-sum-exp (each row attends to its own sequence's keys).
public typealias StepAttention = (_ layer: Int, _ q: Tensor, _ k: Tensor, _ v: Tensor, _ out: Tensor, _ lse: Tensor) throws -> Void

extension LlamaModel {
    /// Positions the rotary table covers; `prepareServing(maxPositions:)` extends it before
    /// steps run so that no step mutates the model.
    public var rotaryCapacity: Int { rotary.capacity }

    /// Builds the rotary table up to `maxPositions` (at most `max_position_embeddings`), so that
    /// batched steps below that position never touch shared state.
    public func prepareServing(maxPositions: Int) throws {
        try requireWhole(for: "serving")
        guard maxPositions <= config.maxPositionEmbeddings else {
            throw ModelInputError.sequenceTooLong(length: maxPositions, limit: config.maxPositionEmbeddings)
        }
        rotary.ensure(capacity: maxPositions)
    }

    /// One batched step: the rows of many sequences stacked (prefill chunks and decode tokens),
    /// row i holding `tokens[i]` at `positions[i]`. Every projection runs as one matrix
    /// product over all rows; `attend` gives each row attention over its own sequence. Returns
    /// logits [logitRows.count, vocab] of the rows named (a view into `workspace`, valid until
    /// its next step).
    public func step(tokens: [Int32], positions: [Int32], logitRows: [Int], workspace: StepWorkspace,
                     attend: StepAttention) throws -> Tensor {
        try requireWhole(for: "a batched step")
        let rows = tokens.count, d = config.hiddenSize
        guard rows > 0, positions.count == rows else {
            throw ModelInputError.shapeMismatch("a step of \(rows) tokens with \(positions.count) positions")
        }
        guard rows <= workspace.rowCapacity, logitRows.count <= workspace.logitCapacity else {
            throw ModelInputError.shapeMismatch("a step of \(rows) rows and \(logitRows.count) logit rows exceeds the workspace "
                + "(\(workspace.rowCapacity) rows, \(workspace.logitCapacity) logit rows)")
        }
        try checkTokens(tokens)
        for p in positions where p < 0 || Int(p) >= rotary.capacity {
            throw ModelInputError.sequenceTooLong(length: Int(p) + 1, limit: rotary.capacity)
        }
        for r in logitRows where r < 0 || r >= rows {
            throw ModelInputError.shapeMismatch("logit row \(r) outside the step's \(rows) rows")
        }
        let buffers = workspace.layer.prefix(rows)
        var x = embed(tokens, into: workspace.hidden.view(offset: 0, shape: [rows, d]))
        try positions.withUnsafeBufferPointer { pos in
            for (l, w) in weights.layers.enumerated() {
                x = try layerForward(w, x: x, rows: rows, positions: pos.baseAddress!, into: buffers) { q, k, v, o, lse in
                    try attend(l, q, k, v, o, lse)
                }.out
            }
        }
        let n = logitRows.count
        guard n > 0 else { return workspace.logits.view(offset: 0, shape: [0, config.vocabSize]) }
        let picked = workspace.picked.view(offset: 0, shape: [n, d])
        for (i, r) in logitRows.enumerated() {
            (picked.pointer + i * d).update(from: x.pointer + r * d, count: d)
        }
        return headLogits(picked, rows: n, normed: workspace.normed, rstd: workspace.rstd,
                          logits: workspace.logits.view(offset: 0, shape: [n, config.vocabSize])).logits
    }
}
