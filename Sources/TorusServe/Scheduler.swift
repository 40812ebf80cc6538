/// Limits of the scheduler.
public struct SchedulerLimits: Sendable, Equatable {
    /// Rows (prompt chunk tokens plus decode tokens) in one step.
    public var maxBatchedTokens: Int
    /// Sequences running at once.
    public var maxRunning: Int
    /// Requests waiting to start; more are refused (HTTP 429).
    public var maxWaiting: Int

    public init(maxBatchedTokens: Int = 2048, maxRunning: Int = 64, maxWaiting: Int = 1024) {
        self.maxBatchedTokens = maxBatchedTokens
        self.maxRunning = maxRunning
        self.maxWaiting = maxWaiting
    }
}

/// The rows one sequence contributes to a batched step: its plan chunk (tokens
/// `start..<start+count`, where their keys and values go; the engine sets the row offset).
struct ScheduledChunk {
    let sequence: Sequence
    var plan: StepPlan.Chunk
    var start: Int { plan.start }
    var count: Int { plan.count }
    /// The chunk ends at the sequence's last token: its logits choose the next token.
    var samples: Bool { start + count == sequence.tokens.count }
}

/// What one step runs.
enum ScheduledStep {
    case idle
    case batch([ScheduledChunk])
    /// The first `length` prompt tokens of a sequence, split across the ranks (with `blend`,
    /// reusing the stored KV of its chunks).
    case prefill(Sequence, length: Int, blocks: [[Int32]], blend: Bool)
    /// A prompt with retrieved chunks, prefilled on rank 0 reusing their stored KV (blocks for
    /// all its tokens are allocated on rank 0, where the sequence then lives).
    case blend(Sequence)
}

/// vLLM v1's scheduling, FCFS: each step has a token budget; running sequences go first (one
/// decode token, or their next prefill chunk), then waiting ones, unless a sequence had to be
/// preempted this step. When blocks run out the last running sequence is preempted: its blocks
/// are freed and it goes back to the front of the queue, to be recomputed (often from the
/// prefix cache) later. With several ranks, a prompt of at least `prefillThreshold` tokens at
/// the head of the queue gets a step of its own that prefills it across the ranks; shorter
/// sequences live on one rank (chosen by their first block, so repeats find their cache).
final class Scheduler {
    let limits: SchedulerLimits
    /// One pool per rank (rank 0 keeps the books for all).
    let pools: [KVBlockPool]
    let blockSize: Int
    /// Prompts this long or longer are prefilled across the ranks (nil: never).
    let prefillThreshold: Int?
    /// Positions held by each rank when `length` positions are prefilled across the ranks.
    let prefillPositions: (Int) throws -> [[Int]]
    let prefillGranularity: Int
    /// Prompts with chunks get a chunk-reuse prefill on rank 0 (when their rows fit its pool).
    var blendEnabled = false
    /// Full prompt blocks are looked up and registered by hash (false: never).
    var prefixCaching = true
    var running: [Sequence] = []
    var waiting: [Sequence] = []
    /// Counters for metrics.
    var preemptions = 0
    var prefixQueries = 0
    var prefixHits = 0
    /// Sequences that cannot fit even in an empty pool, for the engine to fail.
    var unschedulable: [Sequence] = []

    init(limits: SchedulerLimits, pools: [KVBlockPool], prefillThreshold: Int? = nil, prefillGranularity: Int = 1,
         prefillPositions: @escaping (Int) throws -> [[Int]] = { [Array(0..<$0)] }) {
        self.limits = limits
        self.pools = pools
        self.blockSize = pools[0].blockSize
        self.prefillThreshold = pools.count > 1 ? prefillThreshold : nil
        self.prefillGranularity = prefillGranularity
        self.prefillPositions = prefillPositions
    }

    var isIdle: Bool { running.isEmpty && waiting.isEmpty }
    var ranks: Int { pools.count }

    func schedule() -> ScheduledStep {
        if let step = admitBlend() { return step }
        if let step = admitAcrossRanks() { return step }
        var budget = limits.maxBatchedTokens
        var chunks: [ScheduledChunk] = []
        var preempted = false
        var i = 0
        while i < running.count && budget > 0 {
            let seq = running[i]
            let count = min(seq.tokens.count - seq.computed, budget)
            var fits = grow(seq, rows: count)
            while !fits {
                let victim = running.removeLast()
                preempt(victim)
                preempted = true
                if victim === seq { break }
                fits = grow(seq, rows: count)
            }
            guard fits else { break }
            chunks.append(chunk(seq, count: count))
            budget -= count
            i += 1
        }
        if !preempted {
            while let seq = waiting.first, budget > 0, running.count < limits.maxRunning, !isLong(seq), !wantsBlend(seq) {
                let owner = ownerRank(seq)
                seq.appender = owner
                // Prefix cache: full blocks only, never the last prompt token (its logits are needed).
                let hashes = prefixCaching ? promptHashes(seq) : []
                let hit = pools[owner].takeCached(hashes: hashes, tokens: seq.tokens)
                seq.kv[owner] = RankKV(blocks: hit, segments: hit.isEmpty ? [] : [KVSegment(start: 0, count: hit.count * blockSize, localRow: 0)])
                seq.blockHashes = Array(hashes.prefix(hit.count))
                seq.computed = hit.count * blockSize
                let count = min(seq.tokens.count - seq.computed, budget)
                guard grow(seq, rows: count) else {
                    // Give the cached blocks back: a waiting sequence holds nothing.
                    release(seq)
                    if running.isEmpty && chunks.isEmpty {
                        // Every block is free and still too few: the startup check rules this out.
                        waiting.removeFirst()
                        unschedulable.append(seq)
                        continue
                    }
                    break
                }
                prefixQueries += seq.tokens.count
                prefixHits += seq.computed
                seq.timings.cachedTokens = max(seq.timings.cachedTokens, seq.computed)
                admit(seq)
                chunks.append(chunk(seq, count: count))
                budget -= count
            }
        }
        return chunks.isEmpty ? .idle : .batch(chunks)
    }

    /// A long prompt at the head of the queue: a step of its own that prefills all but its last
    /// few tokens across the ranks (the rest, and its logits, come in the next batched step).
    private func admitAcrossRanks() -> ScheduledStep? {
        guard let seq = waiting.first, isLong(seq), running.count < limits.maxRunning else { return nil }
        let g = prefillGranularity
        let length = ((seq.tokens.count - 1) / g) * g
        guard let positions = try? prefillPositions(length), positions.count == ranks else { return nil }
        var taken: [[Int32]] = []
        for (r, pool) in pools.enumerated() {
            // The appender (last rank) also needs room for the rest of the prompt.
            let rows = positions[r].count + (r == ranks - 1 ? seq.tokens.count - length : 0)
            guard let blocks = pool.allocate(pool.blocksFor(positions: rows)) else {
                for (q, b) in taken.enumerated() { pools[q].release(b) }
                if running.isEmpty {
                    // Every block is free and still too few: the startup check rules this out.
                    waiting.removeFirst()
                    unschedulable.append(seq)
                }
                // Running sequences go on; the long prompt waits at the head of the queue.
                return nil
            }
            taken.append(blocks)
        }
        for r in 0..<ranks {
            var kv = RankKV(blocks: taken[r])
            for p in positions[r] { kv.append(start: p, count: 1) }
            seq.kv[r] = kv
        }
        seq.sharded = true
        seq.appender = ranks - 1
        seq.computed = length
        prefixQueries += seq.tokens.count
        admit(seq)
        return .prefill(seq, length: length, blocks: taken, blend: blendEnabled && !seq.request.chunks.isEmpty)
    }

    /// A prompt with chunks is blended on rank 0 when it is shorter than the threshold of a
    /// prefill across the ranks (a longer one is blended across the ranks) and its prompt and
    /// output fit that rank's pool.
    private func wantsBlend(_ seq: Sequence) -> Bool {
        blendEnabled && !seq.request.chunks.isEmpty && seq.computed == 0 && !seq.holdsBlocks && !reachesThreshold(seq)
            && seq.tokens.count + seq.maxTokens <= pools[0].blockCount * blockSize
    }

    /// Whether a prompt is long enough to be prefilled across the ranks.
    private func reachesThreshold(_ seq: Sequence) -> Bool {
        guard let t = prefillThreshold else { return false }
        return seq.tokens.count >= t && seq.tokens.count > prefillGranularity
    }

    /// A prompt with chunks at the head of the queue: a step of its own that prefills all of
    /// it (its last row's logits included) reusing the chunks' stored KV.
    private func admitBlend() -> ScheduledStep? {
        guard let seq = waiting.first, wantsBlend(seq), running.count < limits.maxRunning else { return nil }
        seq.appender = 0
        guard grow(seq, rows: seq.tokens.count) else {
            release(seq)
            if running.isEmpty {
                waiting.removeFirst()
                unschedulable.append(seq)
            }
            return nil
        }
        seq.kv[0].append(start: 0, count: seq.tokens.count)
        seq.blended = true
        prefixQueries += seq.tokens.count
        admit(seq)
        return .blend(seq)
    }

    /// Hashes of the full blocks of `seq`'s tokens but the last, kept while its tokens do not
    /// change (a sequence that waits at the head of the queue is looked up every step).
    private func promptHashes(_ seq: Sequence) -> [UInt64] {
        if let cached = seq.lookupHashes, cached.tokens == seq.tokens.count { return cached.hashes }
        let hashes = BlockHash.chain(tokens: seq.tokens, blockSize: blockSize, count: (seq.tokens.count - 1) / blockSize,
                                     salt: seq.request.cacheSalt)
        seq.lookupHashes = (seq.tokens.count, hashes)
        return hashes
    }

    /// The most KV rows one rank keeps for a request (the appender's share).
    func rowsOnOneRank(promptLength: Int, maxTokens: Int) -> Int {
        guard let t = prefillThreshold, promptLength >= t, promptLength > prefillGranularity,
              let positions = try? prefillPositions(((promptLength - 1) / prefillGranularity) * prefillGranularity) else {
            return promptLength + maxTokens
        }
        let length = ((promptLength - 1) / prefillGranularity) * prefillGranularity
        return (positions.last?.count ?? 0) + promptLength - length + maxTokens
    }

    private func isLong(_ seq: Sequence) -> Bool {
        seq.computed == 0 && !seq.holdsBlocks && reachesThreshold(seq)
    }

    /// One-rank sequences live where their first block's hash points, so a repeated prompt
    /// finds its cached blocks.
    private func ownerRank(_ seq: Sequence) -> Int {
        guard ranks > 1 else { return 0 }
        let first = seq.tokens.prefix(blockSize)
        return Int(BlockHash.of(tokens: first, parent: nil, salt: seq.request.cacheSalt) % UInt64(ranks))
    }

    private func admit(_ seq: Sequence) {
        waiting.removeFirst()
        running.append(seq)
        if !seq.scheduledOnce {
            seq.scheduledOnce = true
            seq.timings.queued = -seq.arrival.timeIntervalSinceNow
        }
    }

    /// The chunk of the next `count` tokens, recording their rows on the appender.
    private func chunk(_ seq: Sequence, count: Int) -> ScheduledChunk {
        let row = seq.kv[seq.appender].rows
        seq.kv[seq.appender].append(start: seq.computed, count: count)
        return ScheduledChunk(sequence: seq, plan: StepPlan.Chunk(rowOffset: 0, count: count, start: seq.computed, appender: seq.appender,
                                                                  appendRow: row, kv: seq.kv))
    }

    /// Gives the appender blocks for `rows` more rows; false when its pool has too few free.
    private func grow(_ seq: Sequence, rows: Int) -> Bool {
        let pool = pools[seq.appender]
        let need = pool.blocksFor(positions: seq.kv[seq.appender].rows + rows) - seq.kv[seq.appender].blocks.count
        guard need > 0 else { return true }
        guard let fresh = pool.allocate(need) else { return false }
        seq.kv[seq.appender].blocks += fresh
        return true
    }

    private func preempt(_ seq: Sequence) {
        release(seq)
        seq.timings.preemptions += 1
        preemptions += 1
        waiting.insert(seq, at: 0)
    }

    /// Frees a sequence's blocks on every rank (their cached content stays reusable) and
    /// forgets its progress.
    func release(_ seq: Sequence) {
        for (r, pool) in pools.enumerated() { pool.release(seq.kv[r].blocks) }
        seq.kv = Array(repeating: RankKV(), count: ranks)
        seq.blockHashes = []
        seq.computed = 0
        seq.sharded = false
        seq.blended = false
        seq.pendingAudit = nil
    }

    /// After a step computed `chunk`: registers a one-rank sequence's newly full blocks for reuse.
    func didCompute(_ chunk: ScheduledChunk) {
        let seq = chunk.sequence
        seq.computed = chunk.start + chunk.count
        guard prefixCaching, !seq.sharded && !seq.blended else { return }
        let pool = pools[seq.appender], blocks = seq.kv[seq.appender].blocks
        let full = seq.computed / blockSize
        while seq.blockHashes.count < full {
            let i = seq.blockHashes.count
            let range = (i * blockSize)..<((i + 1) * blockSize)
            let h = BlockHash.of(tokens: seq.tokens[range], parent: seq.blockHashes.last, salt: seq.request.cacheSalt)
            pool.register(block: blocks[i], hash: h, tokens: seq.tokens[range])
            seq.blockHashes.append(h)
        }
    }

    /// Removes a finished or aborted sequence and frees its blocks.
    func remove(_ seq: Sequence) {
        running.removeAll { $0 === seq }
        waiting.removeAll { $0 === seq }
        release(seq)
    }
}
