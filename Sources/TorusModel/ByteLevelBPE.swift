import Foundation

/// A Hugging Face `tokenizer.json` with a byte-level BPE model (GPT-2, Llama 3, Qwen, SmolLM):
/// added tokens matched literally first, then the normalizer, the pre-tokenizer splits
/// (regex, digits, byte level with its byte-to-unicode map), merges by rank, and the
/// byte-level decoder.
public final class ByteLevelBPE: TextTokenizer, @unchecked Sendable {
    public let vocabularySize: Int
    public let eosTokenID: Int32?
    let vocab: [String: Int32]
    let idToToken: [Int32: String]
    let ranks: [String: Int]
    let added: [(bytes: [UInt8], id: Int32)]
    let addedFirstBytes: Set<UInt8>
    let addedByID: [Int32: (content: String, special: Bool)]
    let normalizer: Normalizer
    let preTokenizers: [PreTokenizer]
    let ignoreMerges: Bool
    private let cacheLock = NSLock()
    private var cache: [String: [Int32]] = [:]

    enum Normalizer { case none, nfc, nfkc }

    enum SplitBehavior: String { case isolated = "Isolated", removed = "Removed", mergedWithPrevious = "MergedWithPrevious",
                                      mergedWithNext = "MergedWithNext" }

    enum PreTokenizer {
        case split(NSRegularExpression, SplitBehavior)
        case digits(individual: Bool)
        case byteLevel(addPrefixSpace: Bool, useRegex: Bool)
    }

    /// GPT-2's pre-tokenizer pattern (the byte-level pre-tokenizer's `use_regex`).
    static let gpt2Pattern = #"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"#

    /// GPT-2's reversible map of bytes to printable characters, and back.
    public static let byteToUnicode: [Character] = {
        var bs = Array(33...126) + Array(161...172) + Array(174...255)
        var cs = bs
        var n = 0
        for b in 0..<256 where !bs.contains(b) {
            bs.append(b)
            cs.append(256 + n)
            n += 1
        }
        var table = [Character](repeating: " ", count: 256)
        for (b, c) in zip(bs, cs) { table[b] = Character(Unicode.Scalar(UInt32(c))!) }
        return table
    }()
    static let unicodeToByte: [Character: UInt8] = {
        var m: [Character: UInt8] = [:]
        for (b, c) in byteToUnicode.enumerated() { m[c] = UInt8(b) }
        return m
    }()

    init(file: String, object: [String: Any], modelVocabulary: Int) throws {
        func fail(_ message: String) -> TokenizerError { TokenizerError(file: file, message: message) }
        guard let model = object["model"] as? [String: Any] else { throw fail("no 'model' object") }
        guard (model["type"] as? String) == "BPE" else {
            throw fail("model type \(model["type"].map { "\($0)" } ?? "none") is not supported (only byte-level BPE)")
        }
        if (model["byte_fallback"] as? Bool) == true { throw fail("byte_fallback BPE (SentencePiece style) is not supported") }
        for key in ["continuing_subword_prefix", "end_of_word_suffix"] {
            if let v = model[key] as? String, !v.isEmpty { throw fail("model.\(key) \"\(v)\" is not supported") }
        }
        guard let vocab = model["vocab"] as? [String: Any] else { throw fail("model.vocab is missing") }
        var v: [String: Int32] = [:], inverse: [Int32: String] = [:]
        for (token, id) in vocab {
            guard let id = id as? Int, id >= 0 else { throw fail("model.vocab[\"\(token)\"] is not a token id") }
            v[token] = Int32(id)
            inverse[Int32(id)] = token
        }
        var ranks: [String: Int] = [:]
        for (i, merge) in ((model["merges"] as? [Any]) ?? []).enumerated() {
            if let s = merge as? String {
                let parts = s.split(separator: " ", omittingEmptySubsequences: false)
                guard parts.count == 2 else { throw fail("model.merges[\(i)] \"\(s)\" is not two symbols") }
                ranks[s] = ranks[s] ?? i
            } else if let pair = merge as? [String], pair.count == 2 {
                let key = pair[0] + " " + pair[1]
                ranks[key] = ranks[key] ?? i
            } else {
                throw fail("model.merges[\(i)] is neither \"a b\" nor [a, b]")
            }
        }
        var added: [(bytes: [UInt8], id: Int32)] = [], addedByID: [Int32: (String, Bool)] = [:]
        for (i, entry) in ((object["added_tokens"] as? [[String: Any]]) ?? []).enumerated() {
            guard let id = entry["id"] as? Int, let content = entry["content"] as? String, !content.isEmpty else {
                throw fail("added_tokens[\(i)] needs an id and a non-empty content")
            }
            added.append((Array(content.utf8), Int32(id)))
            addedByID[Int32(id)] = (content, (entry["special"] as? Bool) ?? false)
            inverse[Int32(id)] = inverse[Int32(id)] ?? content
        }
        added.sort { $0.bytes.count > $1.bytes.count }   // longest match first
        self.vocab = v
        self.idToToken = inverse
        self.ranks = ranks
        self.added = added
        self.addedFirstBytes = Set(added.compactMap(\.bytes.first))
        self.addedByID = addedByID
        self.ignoreMerges = (model["ignore_merges"] as? Bool) ?? false
        let maxID = Int(max(v.values.max() ?? 0, added.map(\.id).max() ?? 0))
        self.vocabularySize = maxID + 1
        guard vocabularySize <= modelVocabulary else {
            throw fail("token ids reach \(maxID), past the model's vocab_size \(modelVocabulary)")
        }
        self.normalizer = try Self.normalizer(object["normalizer"], fail: fail)
        var pre: [PreTokenizer] = []
        try Self.preTokenizers(object["pre_tokenizer"], into: &pre, fail: fail)
        guard pre.contains(where: { if case .byteLevel = $0 { return true } else { return false } }) else {
            throw fail("the pre-tokenizer has no ByteLevel step; only byte-level BPE is supported")
        }
        self.preTokenizers = pre
        if let decoder = object["decoder"] as? [String: Any] {
            let type = decoder["type"] as? String
            let inner = (decoder["decoders"] as? [[String: Any]])?.compactMap { $0["type"] as? String } ?? []
            guard type == "ByteLevel" || (type == "Sequence" && inner.contains("ByteLevel")) else {
                throw fail("decoder type \(type ?? "none") is not supported (only ByteLevel)")
            }
        }
        // The end of sequence: the config's eos token, else a special token named like one.
        let names = ["<|endoftext|>", "<|end_of_text|>", "</s>", "<|im_end|>", "<eos>"]
        self.eosTokenID = names.lazy.compactMap { n in added.first { $0.bytes == Array(n.utf8) }?.id }.first
    }

    static func normalizer(_ value: Any?, fail: (String) -> TokenizerError) throws -> Normalizer {
        guard let n = value as? [String: Any] else { return .none }
        switch n["type"] as? String {
        case "NFC": return .nfc
        case "NFKC": return .nfkc
        case "Sequence":
            let inner = (n["normalizers"] as? [Any]) ?? []
            if inner.isEmpty { return .none }
            if inner.count == 1 { return try normalizer(inner[0], fail: fail) }
            throw fail("normalizer sequences of more than one step are not supported")
        case let t: throw fail("normalizer \(t ?? "?") is not supported (none, NFC or NFKC)")
        }
    }

    static func preTokenizers(_ value: Any?, into out: inout [PreTokenizer], fail: (String) -> TokenizerError) throws {
        guard let p = value as? [String: Any] else { return }
        switch p["type"] as? String {
        case "Sequence":
            for inner in (p["pretokenizers"] as? [Any]) ?? [] { try preTokenizers(inner, into: &out, fail: fail) }
        case "ByteLevel":
            out.append(.byteLevel(addPrefixSpace: (p["add_prefix_space"] as? Bool) ?? false, useRegex: (p["use_regex"] as? Bool) ?? true))
        case "Digits":
            out.append(.digits(individual: (p["individual_digits"] as? Bool) ?? false))
        case "Split":
            let pattern = p["pattern"] as? [String: Any]
            let source: String
            if let r = pattern?["Regex"] as? String { source = r }
            else if let s = pattern?["String"] as? String { source = NSRegularExpression.escapedPattern(for: s) }
            else { throw fail("a Split pre-tokenizer needs pattern.Regex or pattern.String") }
            if (p["invert"] as? Bool) == true { throw fail("Split with invert: true is not supported") }
            let name = (p["behavior"] as? String) ?? "Isolated"
            guard let behavior = SplitBehavior(rawValue: name) else { throw fail("Split behavior \(name) is not supported") }
            do { out.append(.split(try NSRegularExpression(pattern: source), behavior)) } catch {
                throw fail("the Split pattern \(source) does not compile: \(error)")
            }
        case let t:
            throw fail("pre-tokenizer \(t ?? "?") is not supported (Sequence, Split, Digits, ByteLevel)")
        }
    }

    // MARK: - Encoding

    public func encode(_ text: String) -> [Int32] {
        var out: [Int32] = []
        let bytes = Array(text.utf8)
        var start = 0, i = 0
        func flush(_ end: Int) {
            if end > start { encodeOrdinary(String(decoding: bytes[start..<end], as: UTF8.self), into: &out) }
        }
        while i < bytes.count {
            if addedFirstBytes.contains(bytes[i]),
               let hit = added.first(where: { i + $0.bytes.count <= bytes.count && bytes[i..<(i + $0.bytes.count)].elementsEqual($0.bytes) }) {
                flush(i)
                out.append(hit.id)
                i += hit.bytes.count
                start = i
            } else {
                i += 1
            }
        }
        flush(bytes.count)
        return out
    }

    func encodeOrdinary(_ text: String, into out: inout [Int32]) {
        let normalized: String
        switch normalizer {
        case .none: normalized = text
        case .nfc: normalized = text.precomposedStringWithCanonicalMapping
        case .nfkc: normalized = text.precomposedStringWithCompatibilityMapping
        }
        var pieces = [normalized]
        var mapped = false
        for step in preTokenizers {
            switch step {
            case let .split(regex, behavior): pieces = pieces.flatMap { Self.split($0, regex, behavior) }
            case let .digits(individual): pieces = pieces.flatMap { Self.splitDigits($0, individual: individual) }
            case let .byteLevel(addPrefixSpace, useRegex):
                if addPrefixSpace { pieces = pieces.map { $0.hasPrefix(" ") ? $0 : " " + $0 } }
                if useRegex { pieces = pieces.flatMap { Self.split($0, Self.gpt2Regex, .isolated) } }
                pieces = pieces.map { String($0.utf8.map { Self.byteToUnicode[Int($0)] }) }
                mapped = true
            }
        }
        if !mapped { pieces = pieces.map { String($0.utf8.map { Self.byteToUnicode[Int($0)] }) } }
        for piece in pieces where !piece.isEmpty { out += bpe(piece) }
    }

    static let gpt2Regex: NSRegularExpression = {
        // A constant pattern that compiles.
        guard let r = try? NSRegularExpression(pattern: gpt2Pattern) else { fatalError("GPT-2 pre-tokenizer pattern") }
        return r
    }()

    static func split(_ text: String, _ regex: NSRegularExpression, _ behavior: SplitBehavior) -> [String] {
        let ns = text as NSString
        var out: [String] = [], last = 0
        var pendingPrefix: String?
        func emit(_ s: String) {
            if let p = pendingPrefix { out.append(p + s); pendingPrefix = nil } else { out.append(s) }
        }
        for m in regex.matches(in: text, range: NSRange(location: 0, length: ns.length)) where m.range.length > 0 {
            if m.range.location > last { emit(ns.substring(with: NSRange(location: last, length: m.range.location - last))) }
            let match = ns.substring(with: m.range)
            switch behavior {
            case .isolated: emit(match)
            case .removed: break
            case .mergedWithPrevious: if out.isEmpty { emit(match) } else { out[out.count - 1] += match }
            case .mergedWithNext: pendingPrefix = (pendingPrefix ?? "") + match
            }
            last = m.range.location + m.range.length
        }
        if last < ns.length { emit(ns.substring(from: last)) }
        if let p = pendingPrefix { out.append(p) }
        return out
    }

    static func splitDigits(_ text: String, individual: Bool) -> [String] {
        var out: [String] = [], current = "", inDigits = false
        for ch in text {
            let digit = ch.isASCII && ch.isNumber
            if digit && (individual || !inDigits) || (!digit && inDigits) {
                if !current.isEmpty { out.append(current) }
                current = ""
            }
            current.append(ch)
            inDigits = digit
        }
        if !current.isEmpty { out.append(current) }
        return out
    }

    /// Merges the symbols of one byte-mapped piece by rank.
    func bpe(_ piece: String) -> [Int32] {
        if ignoreMerges, let id = vocab[piece] { return [id] }
        cacheLock.lock()
        if let hit = cache[piece] { cacheLock.unlock(); return hit }
        cacheLock.unlock()
        var parts = piece.map(String.init)
        while parts.count > 1 {
            var best = Int.max, at = -1
            for i in 0..<(parts.count - 1) {
                if let r = ranks[parts[i] + " " + parts[i + 1]], r < best { best = r; at = i }
            }
            guard at >= 0 else { break }
            let a = parts[at], b = parts[at + 1]
            var merged: [String] = []
            merged.reserveCapacity(parts.count)
            var i = 0
            while i < parts.count {
                if i < parts.count - 1 && parts[i] == a && parts[i + 1] == b {
                    merged.append(a + b)
                    i += 2
                } else {
                    merged.append(parts[i])
                    i += 1
                }
            }
            parts = merged
        }
        // A symbol missing from the vocabulary falls back to its single characters (bytes).
        let ids = parts.flatMap { p -> [Int32] in
            if let id = vocab[p] { return [id] }
            return p.compactMap { vocab[String($0)] }
        }
        cacheLock.lock()
        if cache.count > 100_000 { cache.removeAll() }
        cache[piece] = ids
        cacheLock.unlock()
        return ids
    }

    // MARK: - Decoding

    /// The text of `tokens`; special added tokens are skipped (as vLLM's default
    /// `skip_special_tokens`), invalid UTF-8 becomes U+FFFD.
    public func decode(_ tokens: [Int32]) -> String {
        var bytes: [UInt8] = []
        for t in tokens {
            if let a = addedByID[t] {
                if !a.special { bytes += Array(a.content.utf8) }
                continue
            }
            guard let s = idToToken[t] else { continue }
            for ch in s {
                if let b = Self.unicodeToByte[ch] { bytes.append(b) } else { bytes += Array(String(ch).utf8) }
            }
        }
        return String(decoding: bytes, as: UTF8.self)
    }
}

/// Reads `tokenizer.json`.
public enum TokenizerJSON {
    /// The tokenizer of `path`: the byte tokenizer when the file maps the 256 bytes to ids
    /// 0-255 with no merges (what Torus writes for byte models), else byte-level BPE.
    public static func load(path: String, modelVocabulary: Int) throws -> any TextTokenizer {
        guard let data = FileManager.default.contents(atPath: path) else {
            throw TokenizerError(file: path, message: "cannot read the file")
        }
        let parsed: Any
        do { parsed = try JSONSerialization.jsonObject(with: data) } catch {
            throw TokenizerError(file: path, message: "not valid JSON: \(error.localizedDescription)")
        }
        guard let object = parsed as? [String: Any] else { throw TokenizerError(file: path, message: "the top level is not an object") }
        let bpe = try ByteLevelBPE(file: path, object: object, modelVocabulary: modelVocabulary)
        let identity = bpe.ranks.isEmpty && bpe.added.isEmpty && bpe.vocab.count == 256
            && (0..<256).allSatisfy { bpe.vocab[String(ByteLevelBPE.byteToUnicode[$0])] == Int32($0) }
        return identity ? ByteTokenizer() : bpe
    }

    /// The `tokenizer.json` of the byte tokenizer (ids 0-255 are the bytes), which
    /// transformers, `tokenizers` and vLLM read as a byte-level BPE without merges.
    public static func byteTokenizerJSON() -> String {
        byteLevelBPE(tokens: (0..<256).map { String(ByteLevelBPE.byteToUnicode[$0]) }, merges: [], useRegex: false)
    }

    /// A byte-level BPE `tokenizer.json`: `tokens` (byte-to-unicode strings) by id, `merges` in
    /// order, GPT-2's pre-tokenizer pattern when `useRegex`, the byte-level decoder.
    public static func byteLevelBPE(tokens: [String], merges: [(String, String)], useRegex: Bool) -> String {
        func quote(_ s: String) -> String {
            let data = (try? JSONSerialization.data(withJSONObject: [s], options: [])) ?? Data("[\"\"]".utf8)
            return String(String(decoding: data, as: UTF8.self).dropFirst().dropLast())
        }
        let vocab = tokens.enumerated().map { "\(quote($1)): \($0)" }.joined(separator: ", ")
        let mergeList = merges.map { "[\(quote($0.0)), \(quote($0.1))]" }.joined(separator: ", ")
        let byteLevel = "{\"type\": \"ByteLevel\", \"add_prefix_space\": false, \"trim_offsets\": \(useRegex), \"use_regex\": \(useRegex)}"
        return """
        {"version": "1.0", "truncation": null, "padding": null, "added_tokens": [], "normalizer": null,
         "pre_tokenizer": \(byteLevel),
         "post_processor": null,
         "decoder": \(byteLevel),
         "model": {"type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": null, "end_of_word_suffix": null,
                   "fuse_unk": false, "byte_fallback": false, "ignore_merges": false, "vocab": {\(vocab)}, "merges": [\(mergeList)]}}
        """
    }
}
