import Foundation

/// A problem with a checkpoint file or directory, naming the file, tensor or byte offset.
public enum CheckpointError: Error, CustomStringConvertible, Equatable {
    case missingFile(String)
    case malformed(file: String, message: String)
    case truncated(file: String, tensor: String?, needed: Int, available: Int)
    case unsupportedDType(file: String, tensor: String, dtype: String)
    case missingTensor(directory: String, tensor: String)
    case unexpectedTensor(file: String, tensor: String)
    case shapeMismatch(file: String, tensor: String, expected: [Int], found: [Int])
    case config(file: String, message: String)
    case io(path: String, message: String)

    public var description: String {
        switch self {
        case let .missingFile(path): return "checkpoint: \(path) does not exist"
        case let .malformed(file, message): return "checkpoint: \(file): \(message)"
        case let .truncated(file, tensor, needed, available):
            let what = tensor.map { "tensor \($0) needs" } ?? "the header needs"
            return "checkpoint: \(file) is truncated: \(what) bytes up to offset \(needed) but the file has \(available)"
        case let .unsupportedDType(file, tensor, dtype):
            return "checkpoint: \(file): tensor \(tensor) has dtype \(dtype); supported: F32, F16, BF16"
        case let .missingTensor(dir, tensor): return "checkpoint: \(dir) has no tensor \(tensor)"
        case let .unexpectedTensor(file, tensor): return "checkpoint: \(file) has tensor \(tensor), which this model does not use"
        case let .shapeMismatch(file, tensor, expected, found):
            return "checkpoint: \(file): tensor \(tensor) has shape \(found), expected \(expected)"
        case let .config(file, message): return "checkpoint: \(file): \(message)"
        case let .io(path, message): return "checkpoint: \(path): \(message)"
        }
    }
}

/// One tensor's header record in a safetensors file.
public struct SafetensorsEntry: Sendable, Equatable {
    public let name: String
    public let dtype: String
    public let shape: [Int]
    /// Byte range inside the data section (after the header).
    public let begin: Int
    public let end: Int
}

/// Reads a `.safetensors` file: an 8-byte little-endian header length, a JSON header, then
/// the raw tensor bytes. The file is memory-mapped; every offset is checked against its size.
public struct SafetensorsReader {
    public let path: String
    public let entries: [String: SafetensorsEntry]
    public let metadata: [String: String]
    private let data: Data
    private let dataStart: Int

    public init(path: String) throws {
        self.path = path
        let file = (path as NSString).lastPathComponent
        guard FileManager.default.fileExists(atPath: path) else { throw CheckpointError.missingFile(path) }
        do { data = try Data(contentsOf: URL(fileURLWithPath: path), options: .alwaysMapped) } catch {
            throw CheckpointError.io(path: path, message: error.localizedDescription)
        }
        guard data.count >= 8 else { throw CheckpointError.truncated(file: file, tensor: nil, needed: 8, available: data.count) }
        let headerLength = data.withUnsafeBytes { Int(UInt64(littleEndian: $0.loadUnaligned(fromByteOffset: 0, as: UInt64.self))) }
        guard headerLength >= 2, headerLength < 100_000_000 else {
            throw CheckpointError.malformed(file: file, message: "header length \(headerLength) at offset 0 is not plausible")
        }
        guard 8 + headerLength <= data.count else {
            throw CheckpointError.truncated(file: file, tensor: nil, needed: 8 + headerLength, available: data.count)
        }
        dataStart = 8 + headerLength
        let json: Any
        do { json = try JSONSerialization.jsonObject(with: data.subdata(in: 8..<dataStart)) } catch {
            throw CheckpointError.malformed(file: file, message: "header at bytes 8..<\(dataStart) is not valid JSON")
        }
        guard let header = json as? [String: Any] else {
            throw CheckpointError.malformed(file: file, message: "header is not a JSON object")
        }
        var entries: [String: SafetensorsEntry] = [:]
        var metadata: [String: String] = [:]
        let available = data.count - dataStart
        for (name, value) in header {
            if name == "__metadata__" {
                metadata = (value as? [String: String]) ?? [:]
                continue
            }
            guard let rec = value as? [String: Any], let dtype = rec["dtype"] as? String,
                  let shape = (rec["shape"] as? [Any])?.compactMap({ ($0 as? NSNumber)?.intValue }),
                  let offsets = (rec["data_offsets"] as? [Any])?.compactMap({ ($0 as? NSNumber)?.intValue }),
                  offsets.count == 2 else {
                throw CheckpointError.malformed(file: file, message: "tensor \(name) has no valid dtype, shape and data_offsets")
            }
            let (begin, end) = (offsets[0], offsets[1])
            guard begin >= 0, end >= begin, shape.allSatisfy({ $0 >= 0 }) else {
                throw CheckpointError.malformed(file: file, message: "tensor \(name) has data_offsets [\(begin), \(end)]")
            }
            if end > available {
                throw CheckpointError.truncated(file: file, tensor: name, needed: dataStart + end, available: data.count)
            }
            if let size = Self.elementSize(dtype) {
                let expected = shape.reduce(1, *) * size
                guard end - begin == expected else {
                    throw CheckpointError.malformed(file: file,
                        message: "tensor \(name) (\(dtype) \(shape)) needs \(expected) bytes but data_offsets span \(end - begin)")
                }
            }
            entries[name] = SafetensorsEntry(name: name, dtype: dtype, shape: shape, begin: begin, end: end)
        }
        self.entries = entries
        self.metadata = metadata
    }

    static func elementSize(_ dtype: String) -> Int? {
        switch dtype {
        case "F32": return 4
        case "F16", "BF16": return 2
        default: return nil
        }
    }

    /// Copies the named tensor, converted to fp32, into `destination` (`count` elements).
    public func read(_ name: String, into destination: UnsafeMutablePointer<Float>, count: Int) throws {
        let file = (path as NSString).lastPathComponent
        guard let e = entries[name] else { throw CheckpointError.missingTensor(directory: path, tensor: name) }
        guard Self.elementSize(e.dtype) != nil else {
            throw CheckpointError.unsupportedDType(file: file, tensor: name, dtype: e.dtype)
        }
        let n = e.shape.reduce(1, *)
        precondition(n == count, "caller checks shapes before reading")
        data.withUnsafeBytes { raw in
            let base = raw.baseAddress! + dataStart + e.begin
            switch e.dtype {
            case "F32":
                for i in 0..<n { destination[i] = Float(bitPattern: UInt32(littleEndian: base.loadUnaligned(fromByteOffset: 4 * i, as: UInt32.self))) }
            case "BF16":
                for i in 0..<n {
                    let b = UInt16(littleEndian: base.loadUnaligned(fromByteOffset: 2 * i, as: UInt16.self))
                    destination[i] = Float(bitPattern: UInt32(b) << 16)
                }
            default: // F16
                for i in 0..<n {
                    let b = UInt16(littleEndian: base.loadUnaligned(fromByteOffset: 2 * i, as: UInt16.self))
                    destination[i] = Float(Float16(bitPattern: b))
                }
            }
        }
    }
}

/// Writes a `.safetensors` file of fp32 tensors.
public enum SafetensorsWriter {
    /// Writes `tensors` (name, shape, values) in the given order to `path`.
    public static func write(path: String, tensors: [(name: String, shape: [Int], values: UnsafeBufferPointer<Float>)],
                             metadata: [String: String] = ["format": "pt"]) throws {
        var header: [String: Any] = ["__metadata__": metadata]
        var offset = 0
        for t in tensors {
            let bytes = t.values.count * 4
            header[t.name] = ["dtype": "F32", "shape": t.shape, "data_offsets": [offset, offset + bytes]] as [String: Any]
            offset += bytes
        }
        var json = try JSONSerialization.data(withJSONObject: header, options: [.sortedKeys])
        // Pad the header with spaces so the data section starts 8-byte aligned.
        while json.count % 8 != 0 { json.append(0x20) }
        guard FileManager.default.createFile(atPath: path, contents: nil),
              let handle = FileHandle(forWritingAtPath: path) else {
            throw CheckpointError.io(path: path, message: "cannot create file")
        }
        defer { try? handle.close() }
        do {
            var len = UInt64(json.count).littleEndian
            try handle.write(contentsOf: Data(bytes: &len, count: 8))
            try handle.write(contentsOf: json)
            for t in tensors {
                // Little-endian host: the fp32 buffer is already the on-disk layout.
                try handle.write(contentsOf: Data(buffer: t.values))
            }
            try handle.synchronize()
        } catch {
            throw CheckpointError.io(path: path, message: "write failed: \(error.localizedDescription)")
        }
    }
}
