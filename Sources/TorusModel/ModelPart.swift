/// Which tensors of a LLaMA model a rank holds: a pipeline stage's decoder layers (one
/// contiguous range, or several with interleaved virtual stages), the embedding on the first
/// stage, and the final norm and LM head on the last. With tied embeddings the last stage also
/// holds the embedding matrix, as its head.
public struct ModelPart: Equatable, Sendable, CustomStringConvertible {
    /// Decoder layers held: ascending, disjoint ranges (one per virtual stage).
    public var layerRanges: [Range<Int>]
    /// Whether the token embedding is held (for the embedding lookup).
    public var embedding: Bool
    /// Whether the final norm and the head are held.
    public var head: Bool

    public init(layers: Range<Int>, embedding: Bool, head: Bool) {
        self.init(layerRanges: [layers], embedding: embedding, head: head)
    }

    public init(layerRanges: [Range<Int>], embedding: Bool, head: Bool) {
        self.layerRanges = layerRanges.filter { !$0.isEmpty }.sorted { $0.lowerBound < $1.lowerBound }
        self.embedding = embedding; self.head = head
    }

    /// Every tensor of the model.
    public static func whole(_ c: LlamaConfig) -> ModelPart {
        ModelPart(layers: 0..<c.numHiddenLayers, embedding: true, head: true)
    }

    /// The part of the pipeline stage that owns `layers`.
    public static func stage(layers: Range<Int>, of c: LlamaConfig) -> ModelPart {
        stage(chunks: [layers], of: c)
    }

    /// The part of a pipeline stage that owns the layer ranges `chunks` (its virtual stages).
    public static func stage(chunks: [Range<Int>], of c: LlamaConfig) -> ModelPart {
        ModelPart(layerRanges: chunks, embedding: chunks.contains { $0.lowerBound == 0 },
                  head: chunks.contains { $0.upperBound == c.numHiddenLayers })
    }

    /// Whether this part is the whole model.
    public func isWhole(_ c: LlamaConfig) -> Bool {
        embedding && head && layerRanges.reduce(0) { $0 + $1.count } == c.numHiddenLayers
    }

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
        return layerRanges.contains { $0.contains(p) }
    }

    /// Whether a pass over `range` (from the embedding when `embedded`, with the head when
    /// `head`) only needs tensors of this part.
    public func covers(layers range: Range<Int>, embedded: Bool, head needsHead: Bool) -> Bool {
        (range.isEmpty || layerRanges.contains { range.lowerBound >= $0.lowerBound && range.upperBound <= $0.upperBound })
            && (!embedded || embedding) && (!needsHead || head)
    }

    public var description: String {
        let ranges = layerRanges.map { "\($0.lowerBound)..<\($0.upperBound)" }.joined(separator: " and ")
        var parts = [layerRanges.isEmpty ? "no decoder layers" : "decoder layers " + ranges]
        if embedding { parts.insert("embedding", at: 0) }
        if head { parts.append("norm and head") }
        return parts.joined(separator: ", ")
    }
}
