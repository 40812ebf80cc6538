import TorusTensor

/// Views of one decoder layer's tensors inside a `ParameterStore` (weights or gradients).
public struct LlamaLayerTensors {
    public let inputNorm: Tensor
    public let q: Tensor
    public let k: Tensor
    public let v: Tensor
    public let o: Tensor
    public let postNorm: Tensor
    public let gate: Tensor
    public let up: Tensor
    public let down: Tensor
}

/// Views of every tensor of a LLaMA model inside a `ParameterStore`, using the Hugging Face
/// transformers names. With tied embeddings `lmHead` is the embedding matrix itself. A store
/// that holds only a `ModelPart` leaves the other views empty (zero elements).
public struct LlamaTensors {
    public let store: ParameterStore
    public let embed: Tensor
    public let layers: [LlamaLayerTensors]
    public let finalNorm: Tensor
    public let lmHead: Tensor

    /// The transformers tensor names and shapes, in layout order.
    public static func layout(for c: LlamaConfig) -> [(name: String, shape: [Int])] {
        let d = c.hiddenSize, hd = c.resolvedHeadDim, f = c.intermediateSize
        var out: [(String, [Int])] = [("model.embed_tokens.weight", [c.vocabSize, d])]
        for i in 0..<c.numHiddenLayers {
            let p = "model.layers.\(i)."
            out.append((p + "input_layernorm.weight", [d]))
            out.append((p + "self_attn.q_proj.weight", [c.numAttentionHeads * hd, d]))
            out.append((p + "self_attn.k_proj.weight", [c.numKeyValueHeads * hd, d]))
            out.append((p + "self_attn.v_proj.weight", [c.numKeyValueHeads * hd, d]))
            out.append((p + "self_attn.o_proj.weight", [d, c.numAttentionHeads * hd]))
            out.append((p + "post_attention_layernorm.weight", [d]))
            out.append((p + "mlp.gate_proj.weight", [f, d]))
            out.append((p + "mlp.up_proj.weight", [f, d]))
            out.append((p + "mlp.down_proj.weight", [d, f]))
        }
        out.append(("model.norm.weight", [d]))
        if !c.tieWordEmbeddings { out.append(("lm_head.weight", [c.vocabSize, d])) }
        return out
    }

    /// Views into `store`, which must have `layout(for: config)` or the part of it one
    /// `ModelPart` holds.
    public init(config c: LlamaConfig, store: ParameterStore) {
        self.store = store
        let absent = Tensor(zeros: [0])
        func view(_ name: String) -> Tensor { store.entry(name) == nil ? absent : store.tensor(name) }
        embed = view("model.embed_tokens.weight")
        layers = (0..<c.numHiddenLayers).map { i in
            let p = "model.layers.\(i)."
            return LlamaLayerTensors(
                inputNorm: view(p + "input_layernorm.weight"),
                q: view(p + "self_attn.q_proj.weight"), k: view(p + "self_attn.k_proj.weight"),
                v: view(p + "self_attn.v_proj.weight"), o: view(p + "self_attn.o_proj.weight"),
                postNorm: view(p + "post_attention_layernorm.weight"),
                gate: view(p + "mlp.gate_proj.weight"), up: view(p + "mlp.up_proj.weight"),
                down: view(p + "mlp.down_proj.weight"))
        }
        finalNorm = view("model.norm.weight")
        lmHead = c.tieWordEmbeddings ? embed : view("lm_head.weight")
    }
}
