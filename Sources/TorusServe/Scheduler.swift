/// Limits of the scheduler.
public struct SchedulerLimits: Sendable, Equatable {
    /// Rows (prompt chunk tokens plus decode tokens) in one step.
    public var maxBatchedTokens: Int
    /// Sequences running at once.
    public var maxRunning: Int
    /// Requests waiting to start; more are refused (HTTP 429/503).
    public var maxWaiting: Int

    public init(maxBatchedTokens: Int = 2048, maxRunning: Int = 64, maxWaiting: Int = 1024) {
        self.maxBatchedTokens = maxBatchedTokens
        self.maxRunning = maxRunning
        self.maxWaiting = maxWaiting
    }
}

/// The rows one sequence contributes to a step: tokens `start..<start+count`.
struct ScheduledChunk {
    let sequence: Sequence
    let start: Int
    let count: Int
    /// The chunk ends at the sequence's last token: its logits choose the next token.
    var samples: Bool { start + count == sequence.tokens.count }
}

/// vLLM v1's scheduling, FCFS: each step has a token budget; running sequences go first (one
/// decode token, or their next prefill chunk), then waiting ones, unless a sequence had to be
/// preempted this step. When blocks run out the last running sequence is preempted: its blocks
/// are freed and it goes back to the front of the queue, to be recomputed (often from the
/// prefix cache) later.
final class Scheduler {
    let limits: SchedulerLimits
    let pool: KVBlockPool
    var running: [Sequence] = []
    var waiting: [Sequence] = []
    /// Counters for metrics.
    var preemptions = 0
    var prefixQueries = 0
    var prefixHits = 0
    /// Sequences that cannot fit even in an empty pool, for the engine to fail.
    var unschedulable: [Sequence] = []

    init(limits: SchedulerLimits, pool: KVBlockPool) {
        self.limits = limits
        self.pool = pool
    }

    var isIdle: Bool { running.isEmpty && waiting.isEmpty }

    /// The chunks of the next step (empty when nothing can run).
    func schedule() -> [ScheduledChunk] {
        var budget = limits.maxBatchedTokens
        var chunks: [ScheduledChunk] = []
        var preempted = false
        var i = 0
        while i < running.count && budget > 0 {
            let seq = running[i]
            let count = min(seq.tokens.count - seq.computed, budget)
            var fits = grow(seq, to: seq.computed + count)
            while !fits {
                let victim = running.removeLast()
                preempt(victim)
                preempted = true
                if victim === seq { break }
                fits = grow(seq, to: seq.computed + count)
            }
            guard fits else { break }
            chunks.append(ScheduledChunk(sequence: seq, start: seq.computed, count: count))
            budget -= count
            i += 1
        }
        guard !preempted else { return chunks }
        while let seq = waiting.first, budget > 0, running.count < limits.maxRunning {
            // Prefix cache: full blocks only, never the last prompt token (its logits are needed).
            let full = (seq.tokens.count - 1) / pool.blockSize
            let hashes = BlockHash.chain(tokens: seq.tokens, blockSize: pool.blockSize, count: full, salt: seq.request.cacheSalt)
            let hit = pool.takeCached(hashes: hashes, tokens: seq.tokens)
            seq.blocks = hit
            seq.blockHashes = Array(hashes.prefix(hit.count))
            seq.computed = hit.count * pool.blockSize
            let count = min(seq.tokens.count - seq.computed, budget)
            guard grow(seq, to: seq.computed + count) else {
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
            waiting.removeFirst()
            running.append(seq)
            if !seq.scheduledOnce {
                seq.scheduledOnce = true
                seq.timings.queued = -seq.arrival.timeIntervalSinceNow
            }
            chunks.append(ScheduledChunk(sequence: seq, start: seq.computed, count: count))
            budget -= count
        }
        return chunks
    }

    /// Gives `seq` blocks for `positions` positions; false when the pool has too few free.
    private func grow(_ seq: Sequence, to positions: Int) -> Bool {
        let need = pool.blocksFor(positions: positions) - seq.blocks.count
        guard need > 0 else { return true }
        guard let fresh = pool.allocate(need) else { return false }
        seq.blocks += fresh
        return true
    }

    private func preempt(_ seq: Sequence) {
        release(seq)
        seq.timings.preemptions += 1
        preemptions += 1
        waiting.insert(seq, at: 0)
    }

    /// Frees a sequence's blocks (their cached content stays reusable) and forgets its progress.
    func release(_ seq: Sequence) {
        pool.release(seq.blocks)
        seq.blocks = []
        seq.blockHashes = []
        seq.computed = 0
    }

    /// After a step computed `chunk`: registers the sequence's newly full blocks for reuse.
    func didCompute(_ chunk: ScheduledChunk) {
        let seq = chunk.sequence
        seq.computed = chunk.start + chunk.count
        let full = seq.computed / pool.blockSize
        while seq.blockHashes.count < full {
            let i = seq.blockHashes.count
            let range = (i * pool.blockSize)..<((i + 1) * pool.blockSize)
            let h = BlockHash.of(tokens: seq.tokens[range], parent: seq.blockHashes.last, salt: seq.request.cacheSalt)
            pool.register(block: seq.blocks[i], hash: h, tokens: seq.tokens[range])
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
