/// The bookkeeping of a paged KV cache: `blockCount` blocks of `blockSize` positions with
/// reference counts, a free queue in LRU order, and the prefix cache (hashes of full blocks).
///
/// A freed block keeps its hash and contents until it is handed out again, so a later request
/// with the same prefix can take it back; blocks are evicted from the front of the free queue
/// (least recently freed first). A freed block that holds nothing reusable (no hash) joins the
/// front and is handed out first, so such requests keep reusing the same, recently touched
/// memory instead of walking the whole pool. Used by the engine thread only.
public final class KVBlockPool {
    public let blockCount: Int
    public let blockSize: Int
    private var refCount: [Int32]
    private var hashOf: [UInt64?]
    private var tokensOf: [[Int32]]
    // The free queue: a doubly linked list over block ids; `head` is evicted first.
    private var prev: [Int32], next: [Int32]
    private var inFree: [Bool]
    private var head: Int32 = -1, tail: Int32 = -1
    public private(set) var freeCount: Int
    private var cached: [UInt64: Int32] = [:]
    /// Cached blocks handed out for new content since the start (prefix-cache evictions).
    public private(set) var evictions = 0

    public init(blockCount: Int, blockSize: Int) {
        precondition(blockCount > 0 && blockSize > 0, "a KV pool needs blocks")
        self.blockCount = blockCount
        self.blockSize = blockSize
        refCount = Array(repeating: 0, count: blockCount)
        hashOf = Array(repeating: nil, count: blockCount)
        tokensOf = Array(repeating: [], count: blockCount)
        prev = Array(repeating: -1, count: blockCount)
        next = Array(repeating: -1, count: blockCount)
        inFree = Array(repeating: false, count: blockCount)
        freeCount = 0
        for b in 0..<blockCount { pushBack(Int32(b)) }
    }

    /// Share of blocks in use by running sequences (vLLM's `kv_cache_usage_perc`, 0-1).
    public var usage: Double { 1 - Double(freeCount) / Double(blockCount) }

    /// Blocks needed to hold `positions` positions.
    public func blocksFor(positions: Int) -> Int { (positions + blockSize - 1) / blockSize }

    /// Takes `count` blocks off the free queue (evicting their cached content), or nil when
    /// fewer are free.
    public func allocate(_ count: Int) -> [Int32]? {
        guard count <= freeCount else { return nil }
        var out: [Int32] = []
        out.reserveCapacity(count)
        for _ in 0..<count {
            let b = head
            unlink(b)
            if let h = hashOf[Int(b)] {
                if cached[h] == b { cached[h] = nil }
                hashOf[Int(b)] = nil
                tokensOf[Int(b)] = []
                evictions += 1
            }
            refCount[Int(b)] = 1
            out.append(b)
        }
        return out
    }

    /// Drops one reference to each block; cached blocks no longer referenced join the free
    /// queue's back in reverse order (a sequence's last blocks are evicted before its first
    /// ones), blocks without a hash its front.
    public func release(_ blocks: [Int32]) {
        for b in blocks.reversed() {
            refCount[Int(b)] -= 1
            precondition(refCount[Int(b)] >= 0, "KV block \(b) released more often than taken")
            guard refCount[Int(b)] == 0 else { continue }
            if hashOf[Int(b)] == nil { pushFront(b) } else { pushBack(b) }
        }
    }

    /// The cached blocks holding the longest prefix of `hashes` whose contents equal the
    /// matching blocks of `tokens`, each taken (reference count + 1).
    public func takeCached(hashes: [UInt64], tokens: [Int32]) -> [Int32] {
        var out: [Int32] = []
        for (i, h) in hashes.enumerated() {
            guard let b = cached[h], tokensOf[Int(b)].elementsEqual(tokens[(i * blockSize)..<((i + 1) * blockSize)]) else { break }
            if refCount[Int(b)] == 0 { unlink(b) }
            refCount[Int(b)] += 1
            out.append(b)
        }
        return out
    }

    /// Records that `block` now holds the full block `tokens` with `hash`, so later requests
    /// can reuse it. A hash already cached keeps its first block.
    public func register(block: Int32, hash: UInt64, tokens: ArraySlice<Int32>) {
        guard hashOf[Int(block)] == nil, cached[hash] == nil else { return }
        hashOf[Int(block)] = hash
        tokensOf[Int(block)] = Array(tokens)
        cached[hash] = block
    }

    /// Blocks whose content is cached for reuse (in use or free).
    public var cachedBlockCount: Int { cached.count }

    private func pushBack(_ b: Int32) { link(b, before: -1) }
    private func pushFront(_ b: Int32) { link(b, before: head) }

    /// Puts free block `b` into the queue before block `successor` (-1: at the back).
    private func link(_ b: Int32, before successor: Int32) {
        let predecessor = successor >= 0 ? prev[Int(successor)] : tail
        inFree[Int(b)] = true
        prev[Int(b)] = predecessor
        next[Int(b)] = successor
        if predecessor >= 0 { next[Int(predecessor)] = b } else { head = b }
        if successor >= 0 { prev[Int(successor)] = b } else { tail = b }
        freeCount += 1
    }

    private func unlink(_ b: Int32) {
        precondition(inFree[Int(b)], "KV block \(b) is not free")
        let p = prev[Int(b)], n = next[Int(b)]
        if p >= 0 { next[Int(p)] = n } else { head = n }
        if n >= 0 { prev[Int(n)] = p } else { tail = p }
        inFree[Int(b)] = false
        freeCount -= 1
    }
}
