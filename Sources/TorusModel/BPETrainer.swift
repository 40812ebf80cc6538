import Foundation

/// Trains a byte-level BPE tokenizer the way GPT-2's was trained: text split by GPT-2's
/// pre-tokenizer pattern, every piece's bytes as the initial symbols (ids 0-255), then the
/// most frequent adjacent pair merged into a new token until the vocabulary is full (ties go
/// to the pair of smaller ids). The result is a `tokenizer.json` that `ByteLevelBPE`,
/// Hugging Face `tokenizers`, transformers and vLLM read.
public struct BPETrainer {
    /// Merges in order, as pairs of token ids.
    public private(set) var merges: [(Int32, Int32)] = []
    /// Token strings in the byte-to-unicode alphabet, by id.
    public private(set) var tokens: [String]

    /// Trains on `text` until `vocabularySize` tokens (at least 256) or no pair occurs twice.
    public init(text: String, vocabularySize: Int, progress: ((Int) -> Void)? = nil) {
        tokens = (0..<256).map { String(ByteLevelBPE.byteToUnicode[$0]) }
        var counts: [String: Int] = [:]
        for piece in ByteLevelBPE.split(text, ByteLevelBPE.gpt2Regex, .isolated) where !piece.isEmpty { counts[piece, default: 0] += 1 }
        // Unique pieces as symbol arrays, with their counts (sorted: the result does not depend on hashing).
        var words: [[Int32]] = [], weights: [Int] = []
        for (piece, n) in counts.sorted(by: { $0.key < $1.key }) {
            words.append(piece.utf8.map { Int32($0) })
            weights.append(n)
        }
        while tokens.count < vocabularySize {
            var pairs: [Int64: Int] = [:]
            for (w, word) in words.enumerated() where word.count > 1 {
                for i in 0..<(word.count - 1) { pairs[Int64(word[i]) << 32 | Int64(word[i + 1]), default: 0] += weights[w] }
            }
            guard let best = pairs.max(by: { $0.value != $1.value ? $0.value < $1.value : $0.key > $1.key }), best.value >= 2 else { break }
            let a = Int32(best.key >> 32), b = Int32(best.key & 0xFFFF_FFFF), id = Int32(tokens.count)
            merges.append((a, b))
            tokens.append(tokens[Int(a)] + tokens[Int(b)])
            for w in words.indices where words[w].count > 1 {
                var word = words[w], out: [Int32] = []
                out.reserveCapacity(word.count)
                var i = 0
                while i < word.count {
                    if i + 1 < word.count && word[i] == a && word[i + 1] == b { out.append(id); i += 2 } else { out.append(word[i]); i += 1 }
                }
                if out.count != word.count { word = out; words[w] = word }
            }
            progress?(tokens.count)
        }
    }

    /// The trained tokenizer as `tokenizer.json` (GPT-2's byte-level pre-tokenizer with its
    /// regex, the byte-level decoder, no added tokens).
    public var json: String {
        TokenizerJSON.byteLevelBPE(tokens: tokens, merges: merges.map { (tokens[Int($0.0)], tokens[Int($0.1)]) }, useRegex: true)
    }
}
