/// The built-in tokenizer: one token per UTF-8 byte (ids 0-255). Models need a vocabulary
/// of at least 256; ids at or above 256 decode to nothing.
public struct ByteTokenizer: Sendable {
    public init() {}

    public static let vocabularyFloor = 256

    public func encode(_ text: String) -> [Int32] { text.utf8.map { Int32($0) } }

    public func decode(_ tokens: [Int32]) -> String {
        let bytes = tokens.compactMap { $0 >= 0 && $0 < 256 ? UInt8($0) : nil }
        return String(decoding: bytes, as: UTF8.self)
    }
}
