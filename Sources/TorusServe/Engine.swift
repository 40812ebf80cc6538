import Foundation
import TorusModel
import TorusTensor

/// Counters and gauges of the engine, for metrics and tests.
public struct EngineStats: Sendable, Equatable {
    public var running = 0
    public var waiting = 0
    public var kvUsage = 0.0
    public var usedBlocks = 0
    public var promptTokens = 0
    public var generationTokens = 0
    public var preemptions = 0
    public var prefixQueries = 0
    public var prefixHits = 0
    public var steps = 0
    public var finished = 0
    /// Chunk reuse: chunks looked up and found, prompt tokens whose KV was reused, and
    /// prompt tokens computed in reuse prefills (uncached plus selected).
    public var chunkQueries = 0
    public var chunkHits = 0
    public var reusedTokens = 0
    public var recomputedTokens = 0
    /// The chunk store's counters (nil without chunk reuse).
    public var chunkStore: ChunkStoreStats?
    /// Chunks audits disabled (computed in full from then on).
    public var disabledChunks = 0
    public init() {}
}

/// Receives what the engine measures as it happens (the HTTP layer turns it into Prometheus
/// series). Called on the engine thread: return quickly.
public protocol EngineObserver: AnyObject, Sendable {
    func engineDidStep(_ stats: EngineStats)
    func requestDidFinish(_ reason: FinishReason, timings: GenerationTimings)
    /// Gap between two tokens of one request, in seconds.
    func interTokenLatency(_ seconds: Double)
}

/// The serving engine: requests in, tokens out, continuous batching on one thread.
///
/// Every step the scheduler picks decode tokens and prefill chunks of many requests under a
/// token budget; they run as one batched model step whose attention reads each sequence's
/// paged KV blocks; each finished row's logits pick the next token with that request's own
/// sampler. Submission and abort are thread-safe; the model runs only on the engine thread.
public final class Engine: @unchecked Sendable {
    public let model: LlamaModel
    public let config: EngineConfig
    /// The longest sequence served.
    public let maxModelLength: Int
    public let eosTokenID: Int32?
    let pools: [KVBlockPool]
    let scheduler: Scheduler
    let executor: StepExecutor
    let group: ServeGroup
    /// Chunk-KV reuse for prompts with chunks (nil: they get a plain prefill).
    public let reuse: ChunkReuse?
    public weak var observer: EngineObserver?

    private let lock = NSCondition()
    private var incoming: [Sequence] = []
    private var aborts: Set<Int> = []
    private var abortEverything = false
    private var nextID = 0
    private var stopping = false
    private var deadReason: String?
    private var stats = EngineStats()
    private var thread: Thread?
    private var waitingCount = 0

    /// Sizes the KV pool from `config.kvCacheBytes` and starts the engine thread. With a
    /// `group` of several ranks this is rank 0's engine: every step's plan goes to the other
    /// ranks (which run `Engine.serveWorker`), and prompts of at least `prefillThreshold`
    /// tokens are prefilled across them. With `reuse`, prompts whose request names chunks
    /// reuse their stored KV: rank 0 computes the blend and keeps the sequence (one too long
    /// for rank 0's pool gets a plain prefill across the ranks instead).
    public init(model: LlamaModel, config: EngineConfig, eosTokenID: Int32? = nil, group: ServeGroup = SingleRankGroup(),
                prefillThreshold: Int? = nil, reuse: ChunkReuse? = nil) throws {
        guard group.rank == 0 else { throw EngineConfigError("the engine runs on rank 0; other ranks run Engine.serveWorker") }
        let (maxLength, blocks) = try Self.check(model: model, config: config, ranks: group.size)
        self.model = model
        self.config = config
        self.maxModelLength = maxLength
        self.eosTokenID = eosTokenID
        self.group = group
        pools = (0..<group.size).map { _ in KVBlockPool(blockCount: blocks, blockSize: config.blockSize) }
        scheduler = Scheduler(limits: config.limits, pools: pools, prefillThreshold: prefillThreshold,
                              prefillGranularity: group.prefillGranularity, prefillPositions: { try group.prefillPositions(length: $0) })
        executor = Self.makeExecutor(model: model, config: config, blocks: blocks, maxLength: maxLength, group: group)
        self.reuse = reuse
        scheduler.blendEnabled = reuse != nil
        scheduler.prefixCaching = config.enablePrefixCaching
        let thread = Thread { [unowned self] in self.loop() }
        thread.name = "torus-engine"
        thread.stackSize = 8 << 20
        self.thread = thread
        thread.start()
    }

    /// The longest sequence and the blocks per rank, or the setting that is wrong.
    static func check(model: LlamaModel, config: EngineConfig, ranks: Int) throws -> (maxLength: Int, blocks: Int) {
        try model.requireWhole(for: "serving")
        let c = model.config
        let maxLength = config.maxModelLength ?? c.maxPositionEmbeddings
        guard maxLength > 0, maxLength <= c.maxPositionEmbeddings else {
            throw EngineConfigError("max_model_len \(maxLength) must be in 1...\(c.maxPositionEmbeddings) (the model's max_position_embeddings)")
        }
        guard config.blockSize > 0, config.blockSize <= 1024 else {
            throw EngineConfigError("block_size \(config.blockSize) must be in 1...1024")
        }
        guard config.limits.maxBatchedTokens > 0, config.limits.maxRunning > 0, config.limits.maxWaiting >= 0 else {
            throw EngineConfigError("max_num_batched_tokens and max_num_seqs must be positive and max_waiting not negative")
        }
        let perBlock = PagedKVCache.bytesPerBlock(config: c, blockSize: config.blockSize, precision: config.kvCachePrecision)
        let blocks = config.kvCacheBytes / perBlock
        // One rank holds a whole sequence; with several, each holds its share of a long one.
        let share = (maxLength + ranks - 1) / ranks
        let needed = (share + config.blockSize - 1) / config.blockSize
        guard blocks >= needed else {
            throw EngineConfigError("kv_cache_memory of \(config.kvCacheBytes >> 20) MiB holds \(blocks) blocks of \(config.blockSize) "
                + "positions (\(perBlock) bytes each); \(ranks > 1 ? "a rank's share (\(share) positions) of " : "")one sequence of "
                + "max_model_len \(maxLength) needs \(needed) (\((needed * perBlock + (1 << 20) - 1) >> 20) MiB): raise kv_cache_memory "
                + "or lower max_model_len")
        }
        try model.prepareServing(maxPositions: maxLength)
        return (maxLength, blocks)
    }

    static func makeExecutor(model: LlamaModel, config: EngineConfig, blocks: Int, maxLength: Int, group: ServeGroup) -> StepExecutor {
        let cache = PagedKVCache(config: model.config, blockCount: blocks, blockSize: config.blockSize, maxPositions: maxLength,
                                 maxRows: config.limits.maxBatchedTokens, precision: config.kvCachePrecision)
        if config.residentKVCache, !cache.populate() {
            FileHandle.standardError.write(Data("warning: the KV pool could not be backed with memory at startup (MADV_POPULATE_WRITE needs Linux 5.14); its pages are mapped as blocks are first written\n".utf8))
        }
        let workspace = StepWorkspace(config: model.config, rowCapacity: config.limits.maxBatchedTokens,
                                      logitCapacity: config.limits.maxRunning)
        return StepExecutor(model: model, cache: cache, workspace: workspace, group: group)
    }

    /// The loop of a rank other than 0: runs every plan rank 0 sends until it says stop.
    public static func serveWorker(model: LlamaModel, config: EngineConfig, group: ServeGroup) throws {
        let (maxLength, blocks) = try check(model: model, config: config, ranks: group.size)
        let executor = makeExecutor(model: model, config: config, blocks: blocks, maxLength: maxLength, group: group)
        while true {
            let words = try group.exchangePlan([])
            guard let plan = StepPlan(words: words) else { throw EngineConfigError("rank \(group.rank): a malformed step plan arrived") }
            if plan.kind == .stop { return }
            _ = try executor.execute(plan)
        }
    }

    /// Blocks in each rank's KV pool.
    public var blockCount: Int { pools[0].blockCount }

    /// Queues a request; `emit` receives its events on the engine thread. Returns the id to
    /// abort it with. Throws when the request cannot be served or the queue is full.
    @discardableResult
    public func submit(_ request: GenerationRequest, emit: @escaping @Sendable (GenerationEvent) -> Void) throws -> Int {
        guard !request.prompt.isEmpty else { throw EngineError.emptyPrompt }
        let vocab = model.config.vocabSize
        if let bad = request.prompt.first(where: { $0 < 0 || Int($0) >= vocab }) {
            throw EngineError.tokenOutOfRange(token: bad, vocab: vocab)
        }
        let room = maxModelLength - request.prompt.count
        if let m = request.maxTokens, m > room || room < 1 {
            throw EngineError.tooLong(prompt: request.prompt.count, requested: m, limit: maxModelLength)
        }
        if room < 1 { throw EngineError.tooLong(prompt: request.prompt.count, requested: 1, limit: maxModelLength) }
        // With several ranks each pool holds a share of max_model_len: the rank that keeps this
        // request's rows must be able to hold them all.
        let rows = scheduler.rowsOnOneRank(promptLength: request.prompt.count, maxTokens: request.maxTokens ?? room)
        let capacity = pools[0].blockCount * pools[0].blockSize
        if rows > capacity {
            throw EngineError.tooLongForOneRank(rows: rows, capacity: capacity, ranks: group.size)
        }
        lock.lock()
        defer { lock.unlock() }
        if let deadReason { throw EngineError.dead(deadReason) }
        guard waitingCount + incoming.count < config.limits.maxWaiting else {
            throw EngineError.queueFull(limit: config.limits.maxWaiting)
        }
        let id = nextID
        nextID += 1
        incoming.append(Sequence(id: id, request: request, maxTokens: request.maxTokens ?? room, ranks: group.size, emit: emit))
        lock.signal()
        return id
    }

    /// Ends a request early (a client went away); its blocks are freed at the next step.
    public func abort(_ id: Int) {
        lock.lock()
        aborts.insert(id)
        lock.signal()
        lock.unlock()
    }

    /// Aborts every request (shutdown).
    public func abortAll() {
        lock.lock()
        abortEverything = true
        lock.signal()
        lock.unlock()
    }

    /// A snapshot of the counters.
    public var currentStats: EngineStats {
        lock.lock()
        defer { lock.unlock() }
        return stats
    }

    /// Why the engine stopped, or nil while it serves.
    public var failure: String? {
        lock.lock()
        defer { lock.unlock() }
        return deadReason
    }

    /// Marks the engine dead (for example when another rank died): requests fail, new ones
    /// are refused.
    public func fail(_ reason: String) {
        lock.lock()
        if deadReason == nil { deadReason = reason }
        lock.signal()
        lock.unlock()
    }

    /// Stops the engine thread after aborting every request; returns once it has stopped.
    public func shutdown() {
        lock.lock()
        stopping = true
        lock.signal()
        lock.unlock()
        while let t = thread, !t.isFinished { usleep(1000) }
    }

    // MARK: - The engine thread

    private func loop() {
        while true {
            lock.lock()
            while incoming.isEmpty && aborts.isEmpty && !abortEverything && scheduler.isIdle && !stopping && deadReason == nil { lock.wait() }
            let fresh = incoming, cancelled = aborts, stop = stopping, dead = deadReason, everything = abortEverything
            incoming = []
            aborts = []
            abortEverything = false
            lock.unlock()

            scheduler.waiting += fresh
            if let dead {
                for seq in scheduler.running + scheduler.waiting {
                    scheduler.remove(seq)
                    seq.emit(.failed(dead))
                }
                publish()
                stopWorkers()
                lock.lock()
                while !stopping { lock.wait() }
                lock.unlock()
                return
            }
            if stop {
                for seq in scheduler.running + scheduler.waiting { finish(seq, .abort) }
                publish()
                stopWorkers()
                return
            }
            if everything || !cancelled.isEmpty {
                for seq in scheduler.running + scheduler.waiting where everything || cancelled.contains(seq.id) { finish(seq, .abort) }
            }
            let step = scheduler.schedule()
            for seq in scheduler.unschedulable {
                seq.emit(.failed("the KV pool of \(pools[0].blockCount) blocks per rank cannot hold \(seq.tokens.count) positions"))
            }
            scheduler.unschedulable = []
            do {
                switch step {
                case .idle:
                    publish()
                    continue
                case let .batch(chunks):
                    let t0 = Date()
                    try run(chunks)
                    if Self.logSteps {
                        let rows = chunks.reduce(0) { $0 + $1.count }
                        FileHandle.standardError.write(Data(String(format: "step: %d chunks, %d rows, %.1f ms (model %.1f ms)\n", chunks.count, rows,
                                                                   -t0.timeIntervalSinceNow * 1000, lastModelSeconds * 1000).utf8))
                    }
                case let .prefill(seq, length, blocks, true):
                    try blendAcrossRanks(seq, length: length, blocks: blocks)
                case let .prefill(seq, length, blocks, false):
                    var plan = StepPlan(kind: .prefill)
                    plan.prefillTokens = Array(seq.tokens[0..<length])
                    plan.prefillBlocks = blocks
                    _ = try group.exchangePlan(plan.encoded())
                    _ = try executor.execute(plan)
                    lock.lock()
                    stats.promptTokens += length
                    lock.unlock()
                case let .blend(seq):
                    try blend(seq)
                }
            } catch {
                fail("a model step failed: \(error)")
            }
            publish()
        }
    }

    static let logSteps = ProcessInfo.processInfo.environment["TORUS_LOG_STEPS"] != nil
    /// The model's share of the last batch step (the rest: sampling, delivering tokens, scheduling).
    private var lastModelSeconds = 0.0

    /// Tells the other ranks to leave their loops (once).
    private var workersStopped = false
    private func stopWorkers() {
        guard group.size > 1, !workersStopped else { return }
        workersStopped = true
        _ = try? group.exchangePlan(StepPlan.stop.encoded())
    }

    private func publish() {
        lock.lock()
        stats.running = scheduler.running.count
        stats.waiting = scheduler.waiting.count + incoming.count
        waitingCount = scheduler.waiting.count
        let total = pools.reduce(0) { $0 + $1.blockCount }, free = pools.reduce(0) { $0 + $1.freeCount }
        stats.kvUsage = 1 - Double(free) / Double(total)
        stats.usedBlocks = total - free
        stats.preemptions = scheduler.preemptions
        stats.prefixQueries = scheduler.prefixQueries
        stats.prefixHits = scheduler.prefixHits
        stats.chunkStore = reuse?.store.stats
        stats.disabledChunks = reuse?.disabledChunkCount ?? 0
        let snapshot = stats
        lock.unlock()
        observer?.engineDidStep(snapshot)
    }

    private func run(_ chunks: [ScheduledChunk]) throws {
        var plan = StepPlan(kind: .batch)
        for c in chunks {
            var chunk = c.plan
            chunk.rowOffset = plan.tokens.count
            plan.chunks.append(chunk)
            plan.tokens += c.sequence.tokens[c.start..<(c.start + c.count)]
            plan.positions += (c.start..<(c.start + c.count)).map(Int32.init)
            if c.samples { plan.logitRows.append(Int32(plan.tokens.count - 1)) }
        }
        if group.size > 1 { _ = try group.exchangePlan(plan.encoded()) }
        let t0 = DispatchTime.now().uptimeNanoseconds
        guard let logits = try executor.execute(plan) else { throw EngineConfigError("rank 0 computed no logits") }
        lastModelSeconds = Double(DispatchTime.now().uptimeNanoseconds - t0) / 1e9
        var prompt = 0, generated = 0
        var logitIndex = 0
        let vocab = model.config.vocabSize
        let now = Date()
        for c in chunks {
            scheduler.didCompute(c)
            let seq = c.sequence
            prompt += max(0, min(c.start + c.count, seq.promptCount) - c.start)
            guard c.samples else { continue }
            sampleNext(seq, logits: logits.pointer + logitIndex * vocab, now: now)
            logitIndex += 1
            generated += 1
        }
        lock.lock()
        stats.steps += 1
        stats.promptTokens += prompt
        stats.generationTokens += generated
        lock.unlock()
    }

    /// Picks `seq`'s next token from its logits row and reports it.
    private func sampleNext(_ seq: Sequence, logits row: UnsafePointer<Float>, now: Date) {
        let vocab = model.config.vocabSize
        let token = seq.sampler.next(logits: row, vocab: vocab)
        let info = seq.request.logprobs.map { Logprobs.of(token: token, logits: row, vocab: vocab, top: $0) }
        if let prepared = seq.pendingAudit, let reuse {
            seq.pendingAudit = nil
            do {
                let result = try reuse.audit(prepared, model: model, tokens: seq.tokens,
                                             logits: Array(UnsafeBufferPointer(start: row, count: vocab)))
                seq.timings.reuse?.audit = result
                if Self.logSteps {
                    FileHandle.standardError.write(Data(String(format: "audit of a blend across ranks: KL %.4f top-1 %@\n", result.kl,
                                                               result.top1Agrees ? "agrees" : "differs").utf8))
                }
            } catch {
                reuse.log("chunk reuse: the audit of request \(seq.id) failed: \(error)")
            }
        }
        seq.tokens.append(token)
        if seq.timings.firstToken == nil {
            seq.timings.firstToken = now.timeIntervalSince(seq.arrival)
        } else if let last = seq.lastTokenTime {
            observer?.interTokenLatency(now.timeIntervalSince(last))
        }
        seq.lastTokenTime = now
        var reason: FinishReason?
        if seq.request.stopTokenIDs.contains(token) || (!seq.request.ignoreEOS && token == eosTokenID) {
            reason = .stop
        } else if seq.outputCount >= seq.maxTokens || seq.tokens.count >= maxModelLength {
            reason = .length
        }
        seq.emit(.token(token, info, finishing: reason))
        if let reason { finish(seq, reason) }
    }

    /// A chunk-reuse prefill of a whole prompt on rank 0: stored chunk KV laid at its
    /// positions, the rest computed, the blended KV written to the sequence's blocks; then
    /// the first token.
    private func blend(_ seq: Sequence) throws {
        guard let reuse else { throw EngineConfigError("a chunk-reuse step without a chunk store") }
        let n = seq.tokens.count, t0 = Date()
        let kv = PromptKV(config: model.config, rows: n)
        let (logits, report) = try reuse.prefill(model: model, tokens: seq.tokens, spans: seq.request.chunks,
                                                 salt: seq.request.cacheSalt, policy: seq.request.reusePolicy, kv: kv)
        let blocks = seq.kv[0].blocks
        for l in 0..<model.config.numHiddenLayers {
            executor.cache.store(layer: l, blocks: blocks, localRow: 0, count: n, k: kv.keys[l], v: kv.values[l], rowOffset: 0)
        }
        seq.computed = n
        seq.timings.reuse = report
        seq.timings.cachedTokens = max(0, n - report.recomputedTokens)
        if Self.logSteps {
            let audit = report.audit.map { String(format: ", audit KL %.4f top-1 %@", $0.kl, $0.top1Agrees ? "agrees" : "differs") } ?? ""
            FileHandle.standardError.write(Data(String(format: "blend: %d tokens, %d/%d chunks hit, %d reused, %d computed, %.1f ms%@\n", n,
                                                       report.hits, report.chunks, report.reusedTokens, report.recomputedTokens,
                                                       -t0.timeIntervalSinceNow * 1000, audit).utf8))
        }
        lock.lock()
        stats.steps += 1
        stats.promptTokens += min(n, seq.promptCount)
        stats.generationTokens += 1
        stats.chunkQueries += report.chunks
        stats.chunkHits += report.hits
        stats.reusedTokens += report.reusedTokens
        stats.recomputedTokens += report.recomputedTokens
        lock.unlock()
        logits.withUnsafeBufferPointer { sampleNext(seq, logits: $0.baseAddress!, now: Date()) }
    }

    /// A chunk-reuse prefill of a long prompt's first `length` tokens split across the ranks:
    /// rank 0 looks the chunks up and lays their stored KV out, each rank blends the rows it
    /// owns into its `blocks`, and rank 0 stores the chunks computed here. The rest of the
    /// prompt, and the first token, come in the next batched step.
    private func blendAcrossRanks(_ seq: Sequence, length: Int, blocks: [[Int32]]) throws {
        guard let reuse else { throw EngineConfigError("a chunk-reuse step without a chunk store") }
        let t0 = Date(), tokens = Array(seq.tokens[0..<length])
        let source = PromptKV(config: model.config, rows: length)
        // Chunks that end past the split part are computed in the batched step, not reused.
        let prepared = try reuse.prepare(model: model, tokens: tokens, spans: seq.request.chunks.filter { $0.upperBound <= length },
                                         salt: seq.request.cacheSalt, policy: seq.request.reusePolicy, kv: source)
        var plan = StepPlan(kind: .blend)
        plan.prefillTokens = tokens
        plan.prefillBlocks = blocks
        plan.cached = prepared.cached
        plan.recompute = prepared.recompute
        if plan.recompute.mask != .exact {
            // The bottom-right mask aligns rows to the end of one rank's keys; it has no meaning
            // across ranks. The same rows are recomputed with the exact mask.
            plan.recompute.mask = .exact
            reuse.log("chunk reuse: faithful CacheBlend's bottom-right mask runs on one rank only; request \(seq.id) "
                + "(\(seq.tokens.count) tokens) is blended across \(group.size) ranks with the exact mask")
        }
        plan.returnedSpans = prepared.missed
        _ = try group.exchangePlan(plan.encoded())
        let result = try executor.blend(plan, source: source)
        if reuse.drawsAudit(prepared) { seq.pendingAudit = prepared }
        var report = reuse.complete(prepared, model: model, tokens: tokens, result: result)
        // The rest of the prompt is computed in the next batched step.
        report.recomputedTokens += seq.tokens.count - length
        seq.timings.reuse = report
        seq.timings.cachedTokens = max(0, seq.tokens.count - report.recomputedTokens)
        if Self.logSteps {
            FileHandle.standardError.write(Data(String(format: "blend across %d ranks: %d of %d tokens, %d/%d chunks hit, %d reused, %d computed, %.1f ms\n",
                                                       group.size, length, seq.tokens.count, report.hits, report.chunks, report.reusedTokens,
                                                       report.recomputedTokens, -t0.timeIntervalSinceNow * 1000).utf8))
        }
        lock.lock()
        stats.steps += 1
        stats.promptTokens += length
        stats.chunkQueries += report.chunks
        stats.chunkHits += report.hits
        stats.reusedTokens += report.reusedTokens
        stats.recomputedTokens += report.recomputedTokens
        lock.unlock()
    }

    private func finish(_ seq: Sequence, _ reason: FinishReason) {
        scheduler.remove(seq)
        seq.timings.finished = -seq.arrival.timeIntervalSinceNow
        seq.timings.outputTokens = seq.outputCount
        lock.lock()
        stats.finished += 1
        lock.unlock()
        // The published figures (blocks in use, running) include this removal before the
        // client hears of the end.
        publish()
        observer?.requestDidFinish(reason, timings: seq.timings)
        seq.emit(.finished(reason, seq.timings))
    }
}
