import Foundation
import TorusModel

/// One stored KV cache of a chunk: the keys and values of every layer for the chunk's tokens,
/// captured at positions `start..<start+tokens.count` after a given context.
public struct ChunkVariant: Sendable {
    /// SHA-256 over the model fingerprint, the tokenizer, the chunk's tokens and the salt.
    public var key: [UInt8]
    /// SHA-256 of what preceded the chunk when captured (the tokens before it).
    public var context: [UInt8]
    public var start: Int
    public var tokens: [Int32]
    /// Captured from a blended (not full) prefill.
    public var approximate: Bool
    public var layers: Int
    /// Floats per key (or value) row.
    public var width: Int
    /// Per layer: keys [tokens, width] (rotated at their captured positions), then values.
    public var data: [Float]
    /// Floating-point operations a hit saves (the chunk's prefill), for eviction.
    public var savedFLOPs: Double
    /// Keys (hex) of the chunks before this one when captured, in order.
    public var priorChunks: [String] = []
    /// How the chunk attended when captured in a full prefill (nil for blended captures).
    public var stats: ChunkAttentionStats?

    public init(key: [UInt8], context: [UInt8], start: Int, tokens: [Int32], approximate: Bool, layers: Int, width: Int,
                data: [Float], savedFLOPs: Double) {
        self.key = key
        self.context = context
        self.start = start
        self.tokens = tokens
        self.approximate = approximate
        self.layers = layers
        self.width = width
        self.data = data
        self.savedFLOPs = savedFLOPs
    }

    public var bytes: Int { data.count * MemoryLayout<Float>.size }
    /// The variant's name: its key and context.
    public var name: String { key.hex + "-" + context.hex.prefix(16) }
}

/// Errors setting up the chunk store.
public struct ChunkStoreError: Error, CustomStringConvertible {
    public let description: String
    public init(_ description: String) { self.description = description }
}

/// Counters of the chunk store (a snapshot).
public struct ChunkStoreStats: Sendable, Equatable {
    public var memoryHits = 0
    public var diskHits = 0
    public var misses = 0
    public var stores = 0
    public var memoryEvictions = 0
    public var diskEvictions = 0
    /// Files found corrupt, truncated or of another model (each a miss, removed when corrupt).
    public var badFiles = 0
    /// Writes that failed (disk full, not writable): the entry was dropped from disk.
    public var failedWrites = 0
    public var memoryBytes = 0
    public var diskBytes = 0
    public var memoryEntries = 0
    public var diskEntries = 0
    public init() {}
}

/// Chunk KV caches in two tiers: memory within a byte budget, and a directory of one file per
/// variant (written atomically, checksummed, indexed again on restart) within another. Entries
/// are evicted by value, (hits + 1) x the compute a hit saves / bytes, lowest first; a disk hit
/// is promoted to memory. A corrupt, truncated or foreign file is a logged miss, never wrong KV.
/// Used from one thread (the engine's); `stats` may be read from any.
public final class ChunkStore: @unchecked Sendable {
    public let fingerprint: String
    public let memoryBudget: Int
    public let directory: String?
    public let diskBudget: Int
    let log: @Sendable (String) -> Void

    private struct Meta {
        var key: [UInt8]
        var context: [UInt8]
        var approximate: Bool
        var bytes: Int
        var savedFLOPs: Double
        var hits: Int
        var lastUse: UInt64
        /// What the variant was captured after and how it attended (Cache-Craft's variant choice).
        var priorChunks: [String] = []
        var stats: ChunkAttentionStats?
        var value: Double { Double(hits + 1) * savedFLOPs / Double(max(bytes, 1)) }
    }

    private var memory: [String: ChunkVariant] = [:]
    private var memoryMeta: [String: Meta] = [:]
    private var disk: [String: Meta] = [:]
    /// Variant names per chunk key (hex), over both tiers.
    private var variants: [String: Set<String>] = [:]
    private var clock: UInt64 = 0
    private let lock = NSLock()
    private var counters = ChunkStoreStats()

    /// Opens the store; with a directory, creates it if needed, checks that it is writable and
    /// indexes the files of this model found there.
    public init(fingerprint: String, memoryBudget: Int, directory: String? = nil, diskBudget: Int = 0,
                log: @escaping @Sendable (String) -> Void = { _ in }) throws {
        self.fingerprint = fingerprint
        self.memoryBudget = memoryBudget
        self.directory = directory
        self.diskBudget = diskBudget
        self.log = log
        guard let directory else { return }
        let fm = FileManager.default
        do { try fm.createDirectory(atPath: directory, withIntermediateDirectories: true) } catch {
            throw ChunkStoreError("chunk store directory \(directory): cannot create it (\(error.localizedDescription))")
        }
        let probe = directory + "/.write-test-\(getpid())"
        guard fm.createFile(atPath: probe, contents: Data("ok".utf8)) else {
            throw ChunkStoreError("chunk store directory \(directory) is not writable")
        }
        try? fm.removeItem(atPath: probe)
        try rebuildIndex()
    }

    public var stats: ChunkStoreStats {
        lock.lock(); defer { lock.unlock() }
        return counters
    }

    private func count(_ change: (inout ChunkStoreStats) -> Void) {
        lock.lock(); defer { lock.unlock() }
        change(&counters)
        counters.memoryBytes = memoryMeta.values.reduce(0) { $0 + $1.bytes }
        counters.memoryEntries = memoryMeta.count
        counters.diskBytes = disk.values.reduce(0) { $0 + $1.bytes }
        counters.diskEntries = disk.count
    }

    /// The chunk key: SHA-256 over the model fingerprint, the tokenizer's identity, the chunk's
    /// tokens and the tenant's salt.
    public func key(tokens: [Int32], tokenizer: String, salt: String?) -> [UInt8] {
        var h = SHA256()
        h.update("torus-chunk-v1")
        h.update(fingerprint)
        h.update(tokenizer)
        h.update(tokens.count)
        for t in tokens { h.update(Int(t)) }
        h.update(salt == nil ? 0 : 1)
        h.update(salt ?? "")
        return h.finalize()
    }

    /// The signature of a chunk's context: the tokens before it.
    public static func context(_ tokens: ArraySlice<Int32>) -> [UInt8] {
        var h = SHA256()
        h.update("torus-context-v1")
        h.update(tokens.count)
        for t in tokens { h.update(Int(t)) }
        return h.finalize()
    }

    /// The best variant of chunk `key`: the one captured after `context` if stored; else, with
    /// `recompute` (Cache-Craft's CFO of a variant's prior chunks and statistics in the new
    /// context), the one that needs the least recompute; else an exact one before an
    /// approximate one, most used first. Loads it from disk when needed.
    public func lookup(key: [UInt8], context: [UInt8], tokens: [Int32],
                       recompute: ((_ priorChunks: [String], _ stats: ChunkAttentionStats) -> Double)? = nil) -> ChunkVariant? {
        guard let names = variants[key.hex], !names.isEmpty else {
            count { $0.misses += 1 }
            return nil
        }
        func meta(_ n: String) -> Meta? { memoryMeta[n] ?? disk[n] }
        func need(_ m: Meta) -> Double? { m.stats.flatMap { recompute?(m.priorChunks, $0) } }
        let ranked = names.compactMap { n in meta(n).map { (n, $0, need($0)) } }
            .sorted { a, b in
                let ea = a.1.context == context, eb = b.1.context == context
                if ea != eb { return ea }
                if (a.2 != nil) != (b.2 != nil) { return a.2 != nil }
                if let ca = a.2, let cb = b.2, ca != cb { return ca < cb }
                if a.1.approximate != b.1.approximate { return !a.1.approximate }
                return a.1.hits != b.1.hits ? a.1.hits > b.1.hits : a.0 < b.0
            }
        for (name, _, _) in ranked {
            clock += 1
            if let v = memory[name] {
                guard v.tokens == tokens else { continue }
                memoryMeta[name]?.hits += 1
                memoryMeta[name]?.lastUse = clock
                disk[name]?.hits += 1
                count { $0.memoryHits += 1 }
                return v
            }
            if disk[name] != nil, let v = readFile(name) {
                guard v.tokens == tokens else { continue }
                disk[name]?.hits += 1
                disk[name]?.lastUse = clock
                var m = disk[name] ?? Meta(key: v.key, context: v.context, approximate: v.approximate, bytes: v.bytes,
                                           savedFLOPs: v.savedFLOPs, hits: 1, lastUse: clock, priorChunks: v.priorChunks, stats: v.stats)
                m.lastUse = clock
                memory[name] = v
                memoryMeta[name] = m
                evictMemory()
                count { $0.diskHits += 1 }
                return v
            }
        }
        count { $0.misses += 1 }
        return nil
    }

    /// Stores a variant in memory and, with a directory, on disk (replacing one of the same
    /// key and context). Evicts lower-value entries to stay within the budgets.
    public func insert(_ v: ChunkVariant) {
        let name = v.name
        clock += 1
        let previous = memoryMeta[name] ?? disk[name]
        let m = Meta(key: v.key, context: v.context, approximate: v.approximate, bytes: v.bytes, savedFLOPs: v.savedFLOPs,
                     hits: previous?.hits ?? 0, lastUse: clock, priorChunks: v.priorChunks, stats: v.stats)
        variants[v.key.hex, default: []].insert(name)
        if v.bytes <= memoryBudget {
            memory[name] = v
            memoryMeta[name] = m
        }
        if directory != nil && v.bytes <= diskBudget {
            if writeFile(v) { disk[name] = m } else { count { $0.failedWrites += 1 } }
        }
        if memoryMeta[name] == nil && disk[name] == nil {
            variants[v.key.hex]?.remove(name)
            log("chunk store: a variant of \(v.bytes) bytes exceeds both budgets; not stored")
        }
        count { $0.stores += 1 }
        evictMemory()
        evictDisk()
    }

    private func lowestValue(_ metas: [String: Meta]) -> String? {
        metas.min { a, b in a.value.value != b.value.value ? a.value.value < b.value.value : a.value.lastUse < b.value.lastUse }?.key
    }

    private func evictMemory() {
        var total = memoryMeta.values.reduce(0) { $0 + $1.bytes }
        while total > memoryBudget, let victim = lowestValue(memoryMeta) {
            total -= memoryMeta[victim]?.bytes ?? 0
            memory[victim] = nil
            memoryMeta[victim] = nil
            forgetIfGone(victim)
            count { $0.memoryEvictions += 1 }
        }
    }

    private func evictDisk() {
        guard let directory else { return }
        var total = disk.values.reduce(0) { $0 + $1.bytes }
        while total > diskBudget, let victim = lowestValue(disk) {
            total -= disk[victim]?.bytes ?? 0
            disk[victim] = nil
            try? FileManager.default.removeItem(atPath: directory + "/" + victim + ".kv")
            forgetIfGone(victim)
            count { $0.diskEvictions += 1 }
        }
    }

    private func forgetIfGone(_ name: String) {
        guard memoryMeta[name] == nil, disk[name] == nil, let key = name.split(separator: "-").first else { return }
        variants[String(key)]?.remove(name)
    }

    // MARK: - Files

    /// File layout: "TORUSKV1", header length (UInt32 LE), header JSON, payload (Float32 LE).
    private struct Header: Codable {
        var fingerprint: String
        var key: String
        var context: String
        var start: Int
        var tokens: [Int32]
        var approximate: Bool
        var layers: Int
        var width: Int
        var savedFLOPs: Double
        var payloadBytes: Int
        var checksum: UInt64
        var priorChunks: [String]?
        var stats: ChunkAttentionStats?
    }

    private static let magic = Array("TORUSKV1".utf8)

    /// FNV-1a over the payload's 64-bit words.
    static func checksum(_ data: UnsafeRawBufferPointer) -> UInt64 {
        var h: UInt64 = 0xcbf2_9ce4_8422_2325
        let words = data.count / 8
        for i in 0..<words {
            h = (h ^ data.loadUnaligned(fromByteOffset: i * 8, as: UInt64.self)) &* 0x100_0000_01b3
        }
        for i in (words * 8)..<data.count { h = (h ^ UInt64(data[i])) &* 0x100_0000_01b3 }
        return h
    }

    private func writeFile(_ v: ChunkVariant) -> Bool {
        guard let directory else { return false }
        let path = directory + "/" + v.name + ".kv"
        let temp = directory + "/.tmp-\(v.name)-\(getpid())"
        let sum = v.data.withUnsafeBytes { Self.checksum($0) }
        let header = Header(fingerprint: fingerprint, key: v.key.hex, context: v.context.hex, start: v.start, tokens: v.tokens,
                            approximate: v.approximate, layers: v.layers, width: v.width, savedFLOPs: v.savedFLOPs,
                            payloadBytes: v.bytes, checksum: sum, priorChunks: v.priorChunks, stats: v.stats)
        guard let json = try? JSONEncoder().encode(header) else { return false }
        var file = Data(Self.magic)
        withUnsafeBytes(of: UInt32(json.count).littleEndian) { file.append(contentsOf: $0) }
        file.append(json)
        v.data.withUnsafeBytes { file.append(contentsOf: $0) }
        do {
            try file.write(to: URL(fileURLWithPath: temp))
            guard rename(temp, path) == 0 else { throw ChunkStoreError("rename failed: errno \(errno)") }
            return true
        } catch {
            try? FileManager.default.removeItem(atPath: temp)
            log("chunk store: cannot write \(path) (\(error)); the entry stays in memory only")
            return false
        }
    }

    /// Reads a header; nil (logged) when the file is not a whole chunk file of this model.
    private func readHeader(_ handle: FileHandle, path: String, size: Int) -> (Header, Int)? {
        guard let head = try? handle.read(upToCount: 12), head.count == 12, Array(head.prefix(8)) == Self.magic else { return nil }
        let length = Int(head[8]) | Int(head[9]) << 8 | Int(head[10]) << 16 | Int(head[11]) << 24
        guard length > 0, length < 1 << 26, let json = try? handle.read(upToCount: length), json.count == length,
              let header = try? JSONDecoder().decode(Header.self, from: json) else { return nil }
        guard size == 12 + length + header.payloadBytes else { return nil }
        return (header, 12 + length)
    }

    private func bad(_ path: String, _ why: String, remove: Bool) {
        log("chunk store: \(path): \(why); treated as a miss" + (remove ? " and removed" : ""))
        if remove { try? FileManager.default.removeItem(atPath: path) }
        count { $0.badFiles += 1 }
    }

    private func readFile(_ name: String) -> ChunkVariant? {
        guard let directory else { return nil }
        let path = directory + "/" + name + ".kv"
        func drop(_ why: String) -> ChunkVariant? {
            bad(path, why, remove: true)
            disk[name] = nil
            forgetIfGone(name)
            return nil
        }
        guard let handle = FileHandle(forReadingAtPath: path) else { return drop("missing") }
        defer { try? handle.close() }
        let size = (try? FileManager.default.attributesOfItem(atPath: path)[.size] as? Int) ?? 0
        guard let (header, offset) = readHeader(handle, path: path, size: size) else { return drop("corrupt or truncated") }
        guard header.fingerprint == fingerprint else { return drop("written for another model") }
        guard (try? handle.seek(toOffset: UInt64(offset))) != nil, let payload = try? handle.read(upToCount: header.payloadBytes),
              payload.count == header.payloadBytes, payload.count == 2 * header.layers * header.tokens.count * header.width * 4 else {
            return drop("truncated")
        }
        guard payload.withUnsafeBytes({ Self.checksum($0) }) == header.checksum else { return drop("checksum mismatch") }
        let floats = payload.withUnsafeBytes { Array($0.bindMemory(to: Float.self)) }
        guard let key = Self.bytes(hex: header.key), let context = Self.bytes(hex: header.context) else { return drop("bad key") }
        var v = ChunkVariant(key: key, context: context, start: header.start, tokens: header.tokens, approximate: header.approximate,
                             layers: header.layers, width: header.width, data: floats, savedFLOPs: header.savedFLOPs)
        v.priorChunks = header.priorChunks ?? []
        v.stats = header.stats
        return v
    }

    private static func bytes(hex: String) -> [UInt8]? {
        let chars = Array(hex.utf8)
        guard chars.count == 64 else { return nil }
        var out: [UInt8] = []
        for i in stride(from: 0, to: 64, by: 2) {
            guard let b = UInt8(String(decoding: chars[i..<(i + 2)], as: UTF8.self), radix: 16) else { return nil }
            out.append(b)
        }
        return out
    }

    /// Indexes the directory's chunk files (headers only); removes stale temporary files.
    private func rebuildIndex() throws {
        guard let directory else { return }
        let names = (try? FileManager.default.contentsOfDirectory(atPath: directory)) ?? []
        for file in names.sorted() {
            let path = directory + "/" + file
            if file.hasPrefix(".tmp-") {
                try? FileManager.default.removeItem(atPath: path)
                continue
            }
            guard file.hasSuffix(".kv") else { continue }
            let name = String(file.dropLast(3))
            guard let handle = FileHandle(forReadingAtPath: path) else { continue }
            let size = (try? FileManager.default.attributesOfItem(atPath: path)[.size] as? Int) ?? 0
            let parsed = readHeader(handle, path: path, size: size)
            try? handle.close()
            guard let (header, _) = parsed, let key = Self.bytes(hex: header.key), let context = Self.bytes(hex: header.context) else {
                bad(path, "corrupt or truncated", remove: true)
                continue
            }
            guard header.fingerprint == fingerprint else {
                bad(path, "written for another model", remove: false)
                continue
            }
            clock += 1
            disk[name] = Meta(key: key, context: context, approximate: header.approximate, bytes: header.payloadBytes,
                              savedFLOPs: header.savedFLOPs, hits: 0, lastUse: clock, priorChunks: header.priorChunks ?? [], stats: header.stats)
            variants[header.key, default: []].insert(name)
        }
        count { _ in }
        if !disk.isEmpty { log("chunk store: \(disk.count) entries on disk in \(directory)") }
        evictDisk()
    }
}
