import Foundation

/// A problem with a token file, naming the file and what was expected.
public enum TokenFileError: Error, CustomStringConvertible, Equatable {
    case missing(String)
    case badHeader(file: String, message: String)
    case truncated(file: String, expectedBytes: Int, actualBytes: Int)
    case tokenOutOfRange(file: String, index: Int, token: Int, vocab: Int)

    public var description: String {
        switch self {
        case let .missing(path): return "token file \(path) does not exist"
        case let .badHeader(file, message): return "token file \(file): \(message)"
        case let .truncated(file, expected, actual):
            return "token file \(file) is truncated: header promises \(expected) bytes, file has \(actual)"
        case let .tokenOutOfRange(file, index, token, vocab):
            return "token file \(file): token \(index) is \(token), outside the vocabulary [0, \(vocab))"
        }
    }
}

/// Torus token files: a 24-byte header (magic `TORUSTOK`, version u32 = 1, token width u32 in
/// bytes, 2 or 4, token count u64, all little-endian) followed by the tokens.
public enum TokenFile {
    public static let magic = Array("TORUSTOK".utf8)
    public static let headerSize = 24

    /// Writes `tokens` with the narrowest width that holds them.
    public static func write(_ tokens: [Int32], to path: String) throws {
        let width: UInt32 = tokens.allSatisfy { $0 >= 0 && $0 <= Int32(UInt16.max) } ? 2 : 4
        var data = Data(magic)
        withUnsafeBytes(of: UInt32(1).littleEndian) { data.append(contentsOf: $0) }
        withUnsafeBytes(of: width.littleEndian) { data.append(contentsOf: $0) }
        withUnsafeBytes(of: UInt64(tokens.count).littleEndian) { data.append(contentsOf: $0) }
        data.reserveCapacity(headerSize + tokens.count * Int(width))
        for t in tokens {
            if width == 2 { withUnsafeBytes(of: UInt16(truncatingIfNeeded: t).littleEndian) { data.append(contentsOf: $0) } }
            else { withUnsafeBytes(of: UInt32(bitPattern: t).littleEndian) { data.append(contentsOf: $0) } }
        }
        let tmp = path + ".partial-\(getpid())"
        do {
            try data.write(to: URL(fileURLWithPath: tmp))
            guard rename(tmp, path) == 0 else { throw CocoaError(.fileWriteUnknown) }
        } catch {
            try? FileManager.default.removeItem(atPath: tmp)
            throw TokenFileError.badHeader(file: path, message: "cannot write: \(error.localizedDescription)")
        }
    }

    /// Whether the file starts with the token-file magic.
    public static func isTokenFile(_ path: String) -> Bool {
        guard let h = FileHandle(forReadingAtPath: path) else { return false }
        defer { try? h.close() }
        return (try? h.read(upToCount: 8)).map { Array($0) == magic } ?? false
    }

    /// Reads and validates a token file; with `vocab`, also checks every id is below it.
    public static func read(_ path: String, vocab: Int? = nil) throws -> [Int32] {
        guard FileManager.default.fileExists(atPath: path) else { throw TokenFileError.missing(path) }
        guard let data = FileManager.default.contents(atPath: path) else {
            throw TokenFileError.badHeader(file: path, message: "cannot read")
        }
        guard data.count >= headerSize else {
            throw TokenFileError.truncated(file: path, expectedBytes: headerSize, actualBytes: data.count)
        }
        return try data.withUnsafeBytes { raw -> [Int32] in
            guard Array(raw[0..<8]) == magic else {
                throw TokenFileError.badHeader(file: path, message: "magic is not TORUSTOK (is this a text file? pass it as text)")
            }
            let version = UInt32(littleEndian: raw.loadUnaligned(fromByteOffset: 8, as: UInt32.self))
            guard version == 1 else { throw TokenFileError.badHeader(file: path, message: "version \(version), expected 1") }
            let width = Int(UInt32(littleEndian: raw.loadUnaligned(fromByteOffset: 12, as: UInt32.self)))
            guard width == 2 || width == 4 else {
                throw TokenFileError.badHeader(file: path, message: "token width \(width) bytes, expected 2 or 4")
            }
            let count = Int(UInt64(littleEndian: raw.loadUnaligned(fromByteOffset: 16, as: UInt64.self)))
            let expected = headerSize + count * width
            guard count >= 0, expected == data.count else {
                throw TokenFileError.truncated(file: path, expectedBytes: expected, actualBytes: data.count)
            }
            var out = [Int32](repeating: 0, count: count)
            for i in 0..<count {
                let off = headerSize + i * width
                let t = width == 2 ? Int32(UInt16(littleEndian: raw.loadUnaligned(fromByteOffset: off, as: UInt16.self)))
                                   : Int32(bitPattern: UInt32(littleEndian: raw.loadUnaligned(fromByteOffset: off, as: UInt32.self)))
                if let vocab, t < 0 || Int(t) >= vocab {
                    throw TokenFileError.tokenOutOfRange(file: path, index: i, token: Int(t), vocab: vocab)
                }
                out[i] = t
            }
            return out
        }
    }
}
