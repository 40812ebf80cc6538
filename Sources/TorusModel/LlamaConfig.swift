import Foundation
import TorusTensor

/// The architecture of a LLaMA decoder, with the field names of a Hugging Face `config.json`.
public struct LlamaConfig: Codable, Equatable, Sendable {
    public var hiddenSize: Int
    public var intermediateSize: Int
    public var numHiddenLayers: Int
    public var numAttentionHeads: Int
    public var numKeyValueHeads: Int
    public var rmsNormEps: Double
    public var ropeTheta: Double
    public var vocabSize: Int
    public var tieWordEmbeddings: Bool
    public var maxPositionEmbeddings: Int
    /// Per-head dimension; `hiddenSize / numAttentionHeads` when absent.
    public var headDim: Int?
    public var initializerRange: Double

    public init(hiddenSize: Int, intermediateSize: Int, numHiddenLayers: Int, numAttentionHeads: Int,
                numKeyValueHeads: Int? = nil, rmsNormEps: Double = 1e-5, ropeTheta: Double = 10000,
                vocabSize: Int, tieWordEmbeddings: Bool = false, maxPositionEmbeddings: Int = 2048,
                headDim: Int? = nil, initializerRange: Double = 0.02) {
        self.hiddenSize = hiddenSize
        self.intermediateSize = intermediateSize
        self.numHiddenLayers = numHiddenLayers
        self.numAttentionHeads = numAttentionHeads
        self.numKeyValueHeads = numKeyValueHeads ?? numAttentionHeads
        self.rmsNormEps = rmsNormEps
        self.ropeTheta = ropeTheta
        self.vocabSize = vocabSize
        self.tieWordEmbeddings = tieWordEmbeddings
        self.maxPositionEmbeddings = maxPositionEmbeddings
        self.headDim = headDim
        self.initializerRange = initializerRange
    }

    enum CodingKeys: String, CodingKey, CaseIterable {
        case hiddenSize = "hidden_size"
        case intermediateSize = "intermediate_size"
        case numHiddenLayers = "num_hidden_layers"
        case numAttentionHeads = "num_attention_heads"
        case numKeyValueHeads = "num_key_value_heads"
        case rmsNormEps = "rms_norm_eps"
        case ropeTheta = "rope_theta"
        case vocabSize = "vocab_size"
        case tieWordEmbeddings = "tie_word_embeddings"
        case maxPositionEmbeddings = "max_position_embeddings"
        case headDim = "head_dim"
        case initializerRange = "initializer_range"
    }

    /// The keys a YAML model section may use.
    public static var knownKeys: [String] { CodingKeys.allCases.map(\.rawValue) }

    public init(from decoder: Decoder) throws {
        let c = try decoder.container(keyedBy: CodingKeys.self)
        hiddenSize = try c.decode(Int.self, forKey: .hiddenSize)
        intermediateSize = try c.decode(Int.self, forKey: .intermediateSize)
        numHiddenLayers = try c.decode(Int.self, forKey: .numHiddenLayers)
        numAttentionHeads = try c.decode(Int.self, forKey: .numAttentionHeads)
        numKeyValueHeads = try c.decodeIfPresent(Int.self, forKey: .numKeyValueHeads) ?? numAttentionHeads
        rmsNormEps = try c.decodeIfPresent(Double.self, forKey: .rmsNormEps) ?? 1e-6
        ropeTheta = try c.decodeIfPresent(Double.self, forKey: .ropeTheta) ?? 10000
        vocabSize = try c.decode(Int.self, forKey: .vocabSize)
        tieWordEmbeddings = try c.decodeIfPresent(Bool.self, forKey: .tieWordEmbeddings) ?? false
        maxPositionEmbeddings = try c.decodeIfPresent(Int.self, forKey: .maxPositionEmbeddings) ?? 2048
        headDim = try c.decodeIfPresent(Int.self, forKey: .headDim)
        initializerRange = try c.decodeIfPresent(Double.self, forKey: .initializerRange) ?? 0.02
    }

    /// Dimensions per attention head.
    public var resolvedHeadDim: Int { headDim ?? hiddenSize / max(1, numAttentionHeads) }

    /// The attention head layout.
    public var attentionShape: AttentionShape {
        AttentionShape(queryHeads: numAttentionHeads, keyValueHeads: numKeyValueHeads, headDim: resolvedHeadDim)
    }

    /// Checks the numbers fit together; throws `ModelConfigError` naming the field.
    public func validate() throws {
        func positive(_ v: Int, _ name: String) throws {
            if v <= 0 { throw ModelConfigError.invalid(field: name, message: "must be positive, got \(v)") }
        }
        try positive(hiddenSize, "hidden_size")
        try positive(intermediateSize, "intermediate_size")
        try positive(numHiddenLayers, "num_hidden_layers")
        try positive(numAttentionHeads, "num_attention_heads")
        try positive(numKeyValueHeads, "num_key_value_heads")
        try positive(vocabSize, "vocab_size")
        try positive(maxPositionEmbeddings, "max_position_embeddings")
        if headDim == nil && hiddenSize % numAttentionHeads != 0 {
            throw ModelConfigError.invalid(field: "hidden_size",
                message: "\(hiddenSize) is not divisible by num_attention_heads \(numAttentionHeads)")
        }
        if resolvedHeadDim % 2 != 0 {
            throw ModelConfigError.invalid(field: "head_dim", message: "rotary embeddings need an even head dimension, got \(resolvedHeadDim)")
        }
        if numAttentionHeads % numKeyValueHeads != 0 {
            throw ModelConfigError.invalid(field: "num_key_value_heads",
                message: "num_attention_heads \(numAttentionHeads) must be a multiple of it (\(numKeyValueHeads))")
        }
        if !(rmsNormEps > 0) { throw ModelConfigError.invalid(field: "rms_norm_eps", message: "must be positive") }
        if !(ropeTheta > 0) { throw ModelConfigError.invalid(field: "rope_theta", message: "must be positive") }
    }

    /// Parameter count.
    public var parameterCount: Int {
        let d = hiddenSize, hd = resolvedHeadDim
        let attn = d * numAttentionHeads * hd * 2 + d * numKeyValueHeads * hd * 2
        let mlp = 3 * d * intermediateSize
        let perLayer = attn + mlp + 2 * d
        return vocabSize * d * (tieWordEmbeddings ? 1 : 2) + numHiddenLayers * perLayer + d
    }

    /// Floating-point operations of one forward pass over `tokens` tokens in sequences of
    /// `seqLen` (matmuls only; causal attention counted at half).
    public func forwardFLOPs(tokens: Int, seqLen: Int, causal: Bool = true) -> Double {
        let d = Double(hiddenSize), hd = Double(resolvedHeadDim)
        let hq = Double(numAttentionHeads), hkv = Double(numKeyValueHeads), f = Double(intermediateSize)
        let proj = 2 * d * (hq * hd * 2 + hkv * hd * 2) + 2 * 3 * d * f
        let attn = 2 * 2 * hq * hd * Double(seqLen) * (causal ? 0.5 : 1)
        let head = 2 * d * Double(vocabSize)
        return Double(tokens) * (Double(numHiddenLayers) * (proj + attn) + head)
    }
}

/// A model configuration problem, naming the field.
public enum ModelConfigError: Error, CustomStringConvertible, Equatable {
    case invalid(field: String, message: String)
    case unsupported(field: String, message: String)

    public var description: String {
        switch self {
        case let .invalid(field, message): return "model config: \(field) \(message)"
        case let .unsupported(field, message): return "model config: \(field) is not supported: \(message)"
        }
    }
}
