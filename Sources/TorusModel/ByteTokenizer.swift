import Foundation

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

/// Turns a stream of byte tokens into printable text as they arrive: complete UTF-8
/// characters are emitted as soon as their last byte comes; bytes that cannot start or
/// continue a character, and control characters other than newline and tab, come out as
/// `\xNN` so that a terminal never receives raw garbage.
public struct ByteStreamDecoder: Sendable {
    private var pending: [UInt8] = []

    public init() {}

    /// Text ready to print after `token` (empty while a multi-byte character is incomplete).
    public mutating func push(_ token: Int32) -> String {
        guard token >= 0 && token < 256 else { return "" }
        pending.append(UInt8(token))
        var out = ""
        while !pending.isEmpty {
            let need = Self.sequenceLength(pending[0])
            if need == 0 { out += Self.escape(pending.removeFirst()); continue }
            if pending.count < need {
                // Wait for more bytes unless one already is not a continuation byte.
                if pending.dropFirst().allSatisfy({ $0 & 0xC0 == 0x80 }) { break }
                out += Self.escape(pending.removeFirst())
                continue
            }
            let chunk = Array(pending[0..<need])
            if let s = String(validating: chunk, as: UTF8.self) {
                pending.removeFirst(need)
                out += s.unicodeScalars.allSatisfy({ $0.value >= 0x20 || $0 == "\n" || $0 == "\t" }) ? s : Self.escape(chunk[0])
            } else {
                out += Self.escape(pending.removeFirst())
            }
        }
        return out
    }

    /// Whatever is still pending, escaped.
    public mutating func flush() -> String {
        defer { pending.removeAll() }
        return pending.map(Self.escape).joined()
    }

    static func sequenceLength(_ lead: UInt8) -> Int {
        switch lead {
        case 0x00...0x7F: return 1
        case 0xC2...0xDF: return 2
        case 0xE0...0xEF: return 3
        case 0xF0...0xF4: return 4
        default: return 0
        }
    }

    static func escape(_ b: UInt8) -> String { String(format: "\\x%02X", b) }
}
