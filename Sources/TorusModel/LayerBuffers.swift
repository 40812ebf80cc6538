import TorusTensor

/// The activations one decoder layer writes for `rows` rows (llm.c's `ActivationTensors`).
/// Training allocates a fresh set per layer and keeps it for backward; batched serving
/// allocates one set for its largest step and reuses views of it for every layer and step.
public struct LayerBuffers {
    public let rstd1: Tensor   // [rows]          1 / rms of the layer input
    public let h1: Tensor      // [rows, d]       input norm
    public let q: Tensor       // [rows, Hq*dh]   rotated queries
    public let k: Tensor       // [rows, Hkv*dh]  rotated keys
    public let v: Tensor       // [rows, Hkv*dh]  values
    public let o: Tensor       // [rows, Hq*dh]   attention output
    public let lse: Tensor     // [rows, Hq]      attention log-sum-exp
    public let x2: Tensor      // [rows, d]       residual after attention
    public let rstd2: Tensor   // [rows]
    public let h2: Tensor      // [rows, d]       post-attention norm
    public let gate: Tensor    // [rows, f]
    public let up: Tensor      // [rows, f]
    public let act: Tensor     // [rows, f]       silu(gate) * up
    public let out: Tensor     // [rows, d]       the layer's output (may alias its input)
    public let rows: Int

    /// Zero-filled buffers for `rows` rows of `config`'s layers.
    public init(rows: Int, config: LlamaConfig) {
        let d = config.hiddenSize, f = config.intermediateSize, shape = config.attentionShape
        self.init(rows: rows, rstd1: Tensor(zeros: [rows]), h1: Tensor(zeros: [rows, d]),
                  q: Tensor(zeros: [rows, shape.queryWidth]), k: Tensor(zeros: [rows, shape.keyValueWidth]),
                  v: Tensor(zeros: [rows, shape.keyValueWidth]), o: Tensor(zeros: [rows, shape.queryWidth]),
                  lse: Tensor(zeros: [rows, shape.queryHeads]), x2: Tensor(zeros: [rows, d]), rstd2: Tensor(zeros: [rows]),
                  h2: Tensor(zeros: [rows, d]), gate: Tensor(zeros: [rows, f]), up: Tensor(zeros: [rows, f]),
                  act: Tensor(zeros: [rows, f]), out: Tensor(zeros: [rows, d]))
    }

    private init(rows: Int, rstd1: Tensor, h1: Tensor, q: Tensor, k: Tensor, v: Tensor, o: Tensor, lse: Tensor, x2: Tensor,
                 rstd2: Tensor, h2: Tensor, gate: Tensor, up: Tensor, act: Tensor, out: Tensor) {
        self.rows = rows
        self.rstd1 = rstd1; self.h1 = h1; self.q = q; self.k = k; self.v = v; self.o = o; self.lse = lse
        self.x2 = x2; self.rstd2 = rstd2; self.h2 = h2; self.gate = gate; self.up = up; self.act = act; self.out = out
    }

    /// Views of the first `count` rows of every buffer (same memory).
    public func prefix(_ count: Int) -> LayerBuffers {
        precondition(count <= rows, "\(count) rows in buffers of \(rows)")
        func cut(_ t: Tensor) -> Tensor {
            let width = t.count / max(rows, 1)
            return t.view(offset: 0, shape: t.shape.count == 1 ? [count] : [count, width])
        }
        return LayerBuffers(rows: count, rstd1: cut(rstd1), h1: cut(h1), q: cut(q), k: cut(k), v: cut(v), o: cut(o),
                            lse: cut(lse), x2: cut(x2), rstd2: cut(rstd2), h2: cut(h2), gate: cut(gate), up: cut(up),
                            act: cut(act), out: cut(out))
    }
}
