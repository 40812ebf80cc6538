import TorusTensor

/// The inference precision of a model's dense layers (`serve.dtype`, `--dtype`, vLLM's names).
public enum InferencePrecision: String, CaseIterable, Codable, Sendable {
    /// fp32 weights and activations (training's arithmetic; the default).
    case float32
    /// Weights and layer inputs rounded to bfloat16, products summed in fp32.
    case bfloat16

    /// The precision a `--dtype` flag or `serve.dtype` names: vLLM's names, or `fp32`, `float`
    /// and `bf16`; nil for any other.
    public init?(name: String) {
        switch name.lowercased() {
        case "float32", "fp32", "float": self = .float32
        case "bfloat16", "bf16": self = .bfloat16
        default: return nil
        }
    }
}

extension LlamaModel {
    /// Switches the dense layers (projections, MLP and head) of forward passes to `precision`:
    /// for bfloat16, packs a bfloat16 copy of the current weights (the fp32 weights stay; later
    /// changes to them are not followed, so this is for serving and generation, not training).
    /// Norms, rotary embeddings, attention and the KV cache stay fp32.
    public func setInferencePrecision(_ precision: InferencePrecision) {
        guard precision == .bfloat16 else { bfloat16Layers = [:]; return }
        var matrices: [Tensor] = []
        for l in part.layerRanges.joined() {
            let w = weights.layers[l]
            matrices += [w.q, w.k, w.v, w.o, w.gate, w.up, w.down]
        }
        matrices.append(weights.lmHead)
        matrices = matrices.filter { $0.count > 0 && $0.shape.count == 2 }
        // One arena for all (on huge pages), each matrix at a 64-byte boundary.
        let counts = matrices.map { (BFloat16Linear.packedCount(outFeatures: $0.shape[0], inFeatures: $0.shape[1]) + 31) / 32 * 32 }
        let arena = Tensor(zeros: [max(1, counts.reduce(0, +) / 2)])
        var packed: [UnsafeRawPointer: BFloat16Linear] = [:], offset = 0
        for (w, count) in zip(matrices, counts) {
            packed[UnsafeRawPointer(w.pointer)] = BFloat16Linear(weight: w.pointer, outFeatures: w.shape[0], inFeatures: w.shape[1],
                                                                 arena: arena, offset: offset)
            offset += count
        }
        bfloat16Layers = packed
    }

    /// The precision `setInferencePrecision` set.
    public var inferencePrecision: InferencePrecision { bfloat16Layers.isEmpty ? .float32 : .bfloat16 }

    /// Bytes of fp32 weights the bfloat16 layers stand in for, less their own bytes (what a
    /// decode step reads less; zero in float32). A tied head is counted once.
    public var inferenceWeightBytesSaved: Int {
        bfloat16Layers.values.reduce(0) { $0 + $1.outFeatures * $1.inFeatures * 4 - $1.bytes }
    }

    /// `y = x W^T` (or `+=`) for the weight `w`, in the inference precision.
    func project(_ x: UnsafePointer<Float>, _ w: Tensor, _ y: UnsafeMutablePointer<Float>, rows: Int, inFeatures: Int,
                 outFeatures: Int, accumulate: Bool = false) {
        if !bfloat16Layers.isEmpty, let packed = bfloat16Layers[UnsafeRawPointer(w.pointer)] {
            packed.forward(x: x, y: y, rows: rows, accumulate: accumulate)
        } else {
            Linear.forward(x: x, weight: w.pointer, y: y, rows: rows, inFeatures: inFeatures, outFeatures: outFeatures, accumulate: accumulate)
        }
    }

    /// `y_i = x W_i^T` for weights that read the same input `x` [rows, inFeatures] (Q, K and V;
    /// gate and up): in bfloat16, `x` is rounded once and the products share one parallel region.
    func project(_ x: UnsafePointer<Float>, _ outputs: [(w: Tensor, y: UnsafeMutablePointer<Float>)], rows: Int, inFeatures: Int) {
        if !bfloat16Layers.isEmpty {
            let packed = outputs.compactMap { o in bfloat16Layers[UnsafeRawPointer(o.w.pointer)].map { (layer: $0, y: o.y) } }
            if packed.count == outputs.count { return BFloat16Linear.forward(packed, x: x, rows: rows) }
        }
        for o in outputs { project(x, o.w, o.y, rows: rows, inFeatures: inFeatures, outFeatures: o.w.shape[0]) }
    }
}
