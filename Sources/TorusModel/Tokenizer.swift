/// Text to token ids and back, as a model directory's tokenizer defines it.
public protocol TextTokenizer: Sendable {
    /// Ids the tokenizer can produce (the model's vocabulary may be larger).
    var vocabularySize: Int { get }
    /// The end-of-sequence token, when the tokenizer has one.
    var eosTokenID: Int32? { get }
    /// Token ids of `text` (no special tokens added).
    func encode(_ text: String) -> [Int32]
    /// The text of `tokens`; bytes that do not form valid UTF-8 become U+FFFD.
    func decode(_ tokens: [Int32]) -> String
}

extension TextTokenizer {
    /// The token of "\n" (byte 10 when a newline takes several tokens): where a one-line
    /// answer stops.
    public var newlineToken: Int32 {
        let ids = encode("\n")
        return ids.count == 1 ? ids[0] : 10
    }
}

extension ByteTokenizer: TextTokenizer {
    public var vocabularySize: Int { ByteTokenizer.vocabularyFloor }
    public var eosTokenID: Int32? { nil }
}

/// Turns a growing list of token ids into text deltas, holding back text while its last
/// character is incomplete (vLLM's prefix/read offsets): only a short window of recent tokens
/// is decoded per token, so a long output costs linear time.
public struct IncrementalDetokenizer: Sendable {
    public let tokenizer: any TextTokenizer
    private var tokens: [Int32] = []
    private var prefixOffset = 0
    private var readOffset = 0

    /// Starts after `context` (for example the prompt), whose text is not emitted.
    public init(tokenizer: any TextTokenizer, context: [Int32] = []) {
        self.tokenizer = tokenizer
        let keep = Array(context.suffix(6))
        tokens = keep
        prefixOffset = 0
        readOffset = keep.count
    }

    /// The new text after appending `token` (empty while a character is incomplete).
    public mutating func push(_ token: Int32) -> String {
        tokens.append(token)
        let prefix = tokenizer.decode(Array(tokens[prefixOffset..<readOffset]))
        let full = tokenizer.decode(Array(tokens[prefixOffset...]))
        // Scalars, not Characters: a combining mark must not merge into the emitted text.
        let prefixScalars = prefix.unicodeScalars.count
        guard full.unicodeScalars.count > prefixScalars, full.unicodeScalars.last != "\u{FFFD}" else { return "" }
        let delta = String(String.UnicodeScalarView(full.unicodeScalars.dropFirst(prefixScalars)))
        prefixOffset = readOffset
        readOffset = tokens.count
        // Keep the window short.
        if prefixOffset > 64 {
            tokens.removeFirst(prefixOffset)
            readOffset -= prefixOffset
            prefixOffset = 0
        }
        return delta
    }

    /// Text still held back (an incomplete character at the end), decoded as it is.
    public mutating func flush() -> String {
        guard readOffset < tokens.count else { return "" }
        let prefix = tokenizer.decode(Array(tokens[prefixOffset..<readOffset]))
        let full = tokenizer.decode(Array(tokens[prefixOffset...]))
        prefixOffset = tokens.count
        readOffset = tokens.count
        return String(String.UnicodeScalarView(full.unicodeScalars.dropFirst(prefix.unicodeScalars.count)))
    }
}
