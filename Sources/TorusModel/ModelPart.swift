/// Which tensors of a LLaMA model a rank holds: a pipeline stage's decoder layers, the
/// embedding on the first stage, and the final norm and LM head on the last. With tied
/// embeddings the last stage also holds the embedding matrix, as its head.
public struct ModelPart: Equatable, Sendable, CustomStringConvertible {
    /// Decoder layers held.
    public var layers: Range<Int>
    /// Whether the token embedding is held (for the embedding lookup).
    public var embedding: Bool
    /// Whether the final norm and the head are held.
    public var head: Bool

    public init(layers: Range<Int>, embedding: Bool, head: Bool) {
        self.layers = layers; self.embedding = embedding; self.head = head
    }

    /// Every tensor of the model.
    public static func whole(_ c: LlamaConfig) -> ModelPart {
        ModelPart(layers: 0..<c.numHiddenLayers, embedding: true, head: true)
    }

    /// The part of the pipeline stage that owns `layers`.
    public static func stage(layers: Range<Int>, of c: LlamaConfig) -> ModelPart {
        ModelPart(layers: layers, embedding: layers.lowerBound == 0, head: layers.upperBound == c.numHiddenLayers)
    }

    /// Whether this part is the whole model.
    public func isWhole(_ c: LlamaConfig) -> Bool { self == .whole(c) }

    /// Where a tensor sits in the model's order: -1 for the embedding, i for decoder layer i,
    /// the layer count for the final norm and the head; nil for a name that is not a LLaMA tensor.
    public static func position(of name: String, layers: Int) -> Int? {
        if name == "model.embed_tokens.weight" { return -1 }
        if name == "model.norm.weight" || name == "lm_head.weight" { return layers }
        guard name.hasPrefix("model.layers.") else { return nil }
        let rest = name.dropFirst("model.layers.".count)
        guard let dot = rest.firstIndex(of: "."), let i = Int(rest[..<dot]) else { return nil }
        return i
    }

    /// Whether the tensor `name` of a model with config `c` belongs to this part.
    public func holds(_ name: String, config c: LlamaConfig) -> Bool {
        guard let p = Self.position(of: name, layers: c.numHiddenLayers) else { return false }
        if p < 0 { return embedding || (head && c.tieWordEmbeddings) }
        if p == c.numHiddenLayers { return head }
        return layers.contains(p)
    }

    /// Whether a pass over `range` (from the embedding when `embedded`, with the head when
    /// `head`) only needs tensors of this part.
    public func covers(layers range: Range<Int>, embedded: Bool, head needsHead: Bool) -> Bool {
        (range.isEmpty || (range.lowerBound >= layers.lowerBound && range.upperBound <= layers.upperBound))
            && (!embedded || embedding) && (!needsHead || head)
    }

    public var description: String {
        var parts = [layers.isEmpty ? "no decoder layers" : "decoder layers \(layers.lowerBound)..<\(layers.upperBound)"]
        if embedding { parts.insert("embedding", at: 0) }
        if head { parts.append("norm and head") }
        return parts.joined(separator: ", ")
    }
}
