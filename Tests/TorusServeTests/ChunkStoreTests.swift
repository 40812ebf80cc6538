import Foundation
import Testing
import TorusModel
@testable import TorusServe

@Suite struct ChunkStoreTests {
    static func directory(_ name: String) -> String {
        let dir = NSTemporaryDirectory() + "torus-chunks-\(name)-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
        try? FileManager.default.removeItem(atPath: dir)
        return dir
    }

    /// A variant of `tokens` rows (2 layers, width 4) whose floats start at `seed`.
    static func variant(_ store: ChunkStore, tokens: [Int32], context: [Int32] = [], salt: String? = nil, seed: Float = 1) -> ChunkVariant {
        let n = tokens.count
        return ChunkVariant(key: store.key(tokens: tokens, tokenizer: "byte", salt: salt), context: ChunkStore.context(context[...]),
                            start: context.count, tokens: tokens, approximate: false, layers: 2, width: 4,
                            data: (0..<(2 * 2 * n * 4)).map { seed + Float($0) }, savedFLOPs: Double(n) * 1000)
    }

    @Test func sha256MatchesTheStandardVectors() {
        #expect(SHA256.hash(Array("".utf8)).hex == "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855")
        #expect(SHA256.hash(Array("abc".utf8)).hex == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad")
        #expect(SHA256.hash(Array("abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq".utf8)).hex
                == "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1")
        #expect(SHA256.hash([UInt8](repeating: 0x61, count: 1000)).hex == "41edece42d63e8d9bf515a9ba6932e1c20cbc9f5a5d134645adb5db1b9737ea3")
    }

    @Test func twoSaltsNeverShareAnEntry() throws {
        let store = try ChunkStore(fingerprint: "m", memoryBudget: 1 << 20)
        let tokens: [Int32] = [1, 2, 3]
        let a = Self.variant(store, tokens: tokens, salt: "tenant-a"), b = Self.variant(store, tokens: tokens, salt: "tenant-b")
        let none = Self.variant(store, tokens: tokens)
        #expect(a.key != b.key && a.key != none.key && b.key != none.key)
        store.insert(a)
        #expect(store.lookup(key: a.key, context: a.context, tokens: tokens) != nil)
        #expect(store.lookup(key: b.key, context: b.context, tokens: tokens) == nil)
        #expect(store.lookup(key: none.key, context: none.context, tokens: tokens) == nil)
        // Another model or tokenizer gives another key.
        let other = try ChunkStore(fingerprint: "m2", memoryBudget: 1 << 20)
        #expect(other.key(tokens: tokens, tokenizer: "byte", salt: nil) != none.key)
        #expect(store.key(tokens: tokens, tokenizer: "bpe:1234", salt: nil) != none.key)
    }

    /// Cache-Craft's variant choice: of two variants of a chunk captured after different
    /// chunks, the one whose recorded inter-chunk attention went to chunks also before it now
    /// (lowest CFO) is returned, over the more used one; also from the disk index after a restart.
    @Test func cacheCraftChoosesTheVariantNeedingLeastRecompute() throws {
        let dir = Self.directory("cfo")
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let store = try ChunkStore(fingerprint: "m", memoryBudget: 1 << 20, directory: dir, diskBudget: 1 << 20)
        let tokens: [Int32] = [7, 8, 9]
        let stats = ChunkAttentionStats(tokenPrefixMass: [0.6, 0.5, 0.7], priorMass: [0.6], selfMass: 0.4)
        var afterA = Self.variant(store, tokens: tokens, context: [1, 1], seed: 1), afterB = Self.variant(store, tokens: tokens, context: [2, 2], seed: 100)
        afterA.priorChunks = ["chunk-a"]; afterA.stats = stats
        afterB.priorChunks = ["chunk-b"]; afterB.stats = stats
        store.insert(afterA)
        store.insert(afterB)
        // The variant after A is the more used one.
        _ = store.lookup(key: afterA.key, context: afterA.context, tokens: tokens)
        let now = ChunkStore.context([Int32](repeating: 3, count: 2)[...])
        let cfo = { (prior: [String], s: ChunkAttentionStats) in
            ReusePolicy.cacheCraftFraction(stats: s, old: prior, new: ["chunk-b"], alpha: 1)
        }
        #expect(cfo(afterB.priorChunks, stats) < cfo(afterA.priorChunks, stats))
        #expect(store.lookup(key: afterA.key, context: now, tokens: tokens)?.data == afterA.data)
        #expect(store.lookup(key: afterA.key, context: now, tokens: tokens, recompute: cfo)?.data == afterB.data)
        let restarted = try ChunkStore(fingerprint: "m", memoryBudget: 1 << 20, directory: dir, diskBudget: 1 << 20)
        #expect(restarted.lookup(key: afterA.key, context: now, tokens: tokens, recompute: cfo)?.data == afterB.data)
    }

    @Test func theDiskTierSurvivesARestart() throws {
        let dir = Self.directory("restart")
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let first = try ChunkStore(fingerprint: "m", memoryBudget: 1 << 20, directory: dir, diskBudget: 1 << 20)
        let v = Self.variant(first, tokens: [4, 5, 6, 7], context: [1, 2])
        first.insert(v)
        let second = try ChunkStore(fingerprint: "m", memoryBudget: 1 << 20, directory: dir, diskBudget: 1 << 20)
        #expect(second.stats.diskEntries == 1 && second.stats.memoryEntries == 0)
        let hit = try #require(second.lookup(key: v.key, context: v.context, tokens: v.tokens))
        #expect(hit.data == v.data && hit.start == 2 && hit.tokens == v.tokens)
        #expect(second.stats.diskHits == 1)
        // Promoted: the next hit comes from memory.
        _ = second.lookup(key: v.key, context: v.context, tokens: v.tokens)
        #expect(second.stats.memoryHits == 1)
    }

    @Test func budgetsHoldUnderAStreamOfNewChunksAndEvictionIsByValue() throws {
        let dir = Self.directory("budget")
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let probe = try ChunkStore(fingerprint: "m", memoryBudget: 0)
        let size = Self.variant(probe, tokens: [0, 0, 0, 0]).bytes
        let store = try ChunkStore(fingerprint: "m", memoryBudget: 3 * size, directory: dir, diskBudget: 5 * size)
        let popular = Self.variant(store, tokens: [9, 9, 9, 9])
        store.insert(popular)
        for _ in 0..<4 { #expect(store.lookup(key: popular.key, context: popular.context, tokens: popular.tokens) != nil) }
        for i in 0..<40 {
            store.insert(Self.variant(store, tokens: [Int32(i), 1, 2, 3], seed: Float(i)))
            let s = store.stats
            #expect(s.memoryBytes <= 3 * size && s.diskBytes <= 5 * size)
        }
        let s = store.stats
        #expect(s.memoryEvictions >= 38 && s.diskEvictions >= 36)
        #expect(s.stores == 41 && s.failedWrites == 0)
        let files = try FileManager.default.contentsOfDirectory(atPath: dir).filter { $0.hasSuffix(".kv") }
        #expect(files.count == s.diskEntries)
        // The often-used chunk outlived forty newer ones (plain LRU would have dropped it).
        #expect(store.lookup(key: popular.key, context: popular.context, tokens: popular.tokens) != nil)
    }

    @Test func corruptTruncatedAndForeignFilesAreMisses() throws {
        let dir = Self.directory("corrupt")
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let store = try ChunkStore(fingerprint: "m", memoryBudget: 0, directory: dir, diskBudget: 1 << 20)
        let a = Self.variant(store, tokens: [1, 2, 3]), b = Self.variant(store, tokens: [4, 5, 6]), c = Self.variant(store, tokens: [7, 8])
        for v in [a, b, c] { store.insert(v) }
        // A flipped payload byte: the checksum catches it.
        let pathA = dir + "/" + a.name + ".kv"
        var bytes = try Data(contentsOf: URL(fileURLWithPath: pathA))
        bytes[bytes.count - 3] ^= 0x40
        try bytes.write(to: URL(fileURLWithPath: pathA))
        #expect(store.lookup(key: a.key, context: a.context, tokens: a.tokens) == nil)
        #expect(!FileManager.default.fileExists(atPath: pathA))
        // A truncated file: a miss now, and dropped when the directory is indexed again.
        let pathB = dir + "/" + b.name + ".kv"
        let whole = try Data(contentsOf: URL(fileURLWithPath: pathB))
        try whole.prefix(whole.count - 10).write(to: URL(fileURLWithPath: pathB))
        #expect(store.lookup(key: b.key, context: b.context, tokens: b.tokens) == nil)
        #expect(store.stats.badFiles == 2)
        try whole.prefix(whole.count / 2).write(to: URL(fileURLWithPath: pathB))
        let reopened = try ChunkStore(fingerprint: "m", memoryBudget: 0, directory: dir, diskBudget: 1 << 20)
        #expect(reopened.stats.diskEntries == 1 && reopened.stats.badFiles == 1)
        #expect(reopened.lookup(key: c.key, context: c.context, tokens: c.tokens)?.data == c.data)
        // Another model's store sees none of these files and leaves them alone.
        let foreign = try ChunkStore(fingerprint: "other", memoryBudget: 0, directory: dir, diskBudget: 1 << 20)
        #expect(foreign.stats.diskEntries == 0)
        #expect(foreign.lookup(key: foreign.key(tokens: c.tokens, tokenizer: "byte", salt: nil), context: c.context, tokens: c.tokens) == nil)
        #expect(FileManager.default.fileExists(atPath: dir + "/" + c.name + ".kv"))
        // Leftover temporary files from an interrupted write are removed at start.
        FileManager.default.createFile(atPath: dir + "/.tmp-half-written", contents: Data([1, 2, 3]))
        _ = try ChunkStore(fingerprint: "m", memoryBudget: 0, directory: dir, diskBudget: 1 << 20)
        #expect(!FileManager.default.fileExists(atPath: dir + "/.tmp-half-written"))
    }

    /// A write that fails (here: its temporary path is taken by a directory, as a full disk
    /// would fail it) drops the disk entry, keeps the memory one and leaves no chunk file.
    @Test func aFailedWriteLeavesNoFileAndKeepsTheEntryInMemory() throws {
        let dir = Self.directory("failed-write")
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let store = try ChunkStore(fingerprint: "m", memoryBudget: 1 << 20, directory: dir, diskBudget: 1 << 20)
        let v = Self.variant(store, tokens: [1, 2, 3, 4])
        try FileManager.default.createDirectory(atPath: dir + "/.tmp-\(v.name)-\(getpid())", withIntermediateDirectories: true)
        store.insert(v)
        #expect(store.stats.failedWrites == 1 && store.stats.diskEntries == 0 && store.stats.memoryEntries == 1)
        #expect(!FileManager.default.fileExists(atPath: dir + "/" + v.name + ".kv"))
        #expect(store.lookup(key: v.key, context: v.context, tokens: v.tokens)?.data == v.data)
    }

    @Test func aDirectoryThatCannotBeCreatedIsAClearError() {
        #expect(throws: ChunkStoreError.self) {
            try ChunkStore(fingerprint: "m", memoryBudget: 1, directory: "/etc/passwd/chunks", diskBudget: 1)
        }
    }

    /// Variants of one chunk: the one captured in the same context is preferred, then exact
    /// before approximate.
    @Test func theSameContextIsPreferred() throws {
        let store = try ChunkStore(fingerprint: "m", memoryBudget: 1 << 20)
        let tokens: [Int32] = [3, 3, 3]
        let alone = Self.variant(store, tokens: tokens, seed: 1)
        let after = Self.variant(store, tokens: tokens, context: [8, 8], seed: 2)
        store.insert(alone)
        store.insert(after)
        #expect(store.lookup(key: alone.key, context: ChunkStore.context([8, 8][...]), tokens: tokens)?.data == after.data)
        #expect(store.lookup(key: alone.key, context: ChunkStore.context([][...]), tokens: tokens)?.data == alone.data)
        #expect(store.lookup(key: alone.key, context: ChunkStore.context([1][...]), tokens: tokens) != nil)
    }

    /// Cache-Craft's fraction: nothing when the same chunks precede in the same order; the
    /// whole CCI when the order is reversed (gamma = 1) or none remain; in between by the kept
    /// share of inter-chunk attention.
    @Test func cacheCraftFractionFollowsBetaAndGamma() {
        let stats = ChunkAttentionStats(tokenPrefixMass: [0.2, 0.4, 0.3], priorMass: [0.2, 0.1], selfMass: 0.7)
        let cci = 1 / (1 + exp(-(0.3 / 0.7)))
        #expect(abs(stats.cci - cci) < 1e-6)
        func f(_ new: [String], alpha: Double = 1) -> Double {
            ReusePolicy.cacheCraftFraction(stats: stats, old: ["a", "b"], new: new, alpha: alpha)
        }
        #expect(f(["a", "b"]) < 1e-9)
        #expect(abs(f(["b", "a"]) - cci) < 1e-6)
        #expect(abs(f([]) - cci) < 1e-6)
        #expect(abs(f(["x", "a"]) - cci * (1 - 2.0 / 3.0)) < 1e-6)
        #expect(abs(f(["b"]) - cci * (1 - 1.0 / 3.0)) < 1e-6)
        #expect(f([], alpha: 5) == 1)
    }
}

@Suite struct DocumentTokenCacheTests {
    /// A document seen again is not tokenized again; past the entry bound the oldest goes first.
    @Test func repeatedDocumentsAreTokenizedOnceAndTheOldestLeaveFirst() {
        let cache = DocumentTokenCache(maxEntries: 2, maxTokens: 100)
        var calls = 0
        func encode(_ s: String) -> [Int32] { calls += 1; return s.utf8.map { Int32($0) } }
        #expect(cache.tokens(of: "ab", encode: encode) == [97, 98])
        #expect(cache.tokens(of: "ab", encode: encode) == [97, 98] && calls == 1)
        _ = cache.tokens(of: "cd", encode: encode)
        _ = cache.tokens(of: "ef", encode: encode)
        #expect(cache.count == 2 && calls == 3)
        _ = cache.tokens(of: "cd", encode: encode)
        #expect(calls == 3, "cd is still cached")
        _ = cache.tokens(of: "ab", encode: encode)
        #expect(calls == 4, "ab was the oldest and left")
        // The token bound: a document longer than the whole budget is returned, not kept.
        #expect(cache.tokens(of: String(repeating: "x", count: 101), encode: encode).count == 101 && cache.count == 2)
    }
}
