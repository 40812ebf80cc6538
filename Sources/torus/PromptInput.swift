import Foundation
import TorusModel

/// Reads token ids from a comma- or space-separated list such as "1,2,3".
func parseTokenIDs(_ text: String, vocab: Int) throws -> [Int32] {
    let parts = text.split(whereSeparator: { $0 == "," || $0 == " " }).map(String.init)
    var out: [Int32] = []
    for p in parts {
        guard let v = Int32(p) else { throw ValidationErrorMessage("'\(p)' in the token list is not an integer") }
        guard v >= 0 && Int(v) < vocab else { throw ValidationErrorMessage("token id \(v) is outside the vocabulary [0, \(vocab))") }
        out.append(v)
    }
    guard !out.isEmpty else { throw ValidationErrorMessage("the token list is empty") }
    return out
}

/// Reads a data file: a Torus token file (by its magic) or text, tokenized by bytes.
func readTokens(path: String, vocab: Int) throws -> [Int32] {
    if TokenFile.isTokenFile(path) { return try TokenFile.read(path, vocab: vocab) }
    guard let data = FileManager.default.contents(atPath: path) else {
        throw ValidationErrorMessage("data file \(path) does not exist or cannot be read")
    }
    guard vocab >= ByteTokenizer.vocabularyFloor else {
        throw ValidationErrorMessage("text input needs the byte tokenizer (vocab_size >= 256); the model has \(vocab). Pass a token file instead")
    }
    return data.map { Int32($0) }
}

struct ValidationErrorMessage: Error, CustomStringConvertible {
    let description: String
    init(_ d: String) { description = d }
}
