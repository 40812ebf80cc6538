import Foundation
import Testing
import TorusModel
import TorusServe
import TorusTensor

/// A small random model with peaked logits (so greedy choices are rarely near-ties).
enum ServeFixture {
    static let config = LlamaConfig(hiddenSize: 64, intermediateSize: 96, numHiddenLayers: 2, numAttentionHeads: 4,
                                    numKeyValueHeads: 2, vocabSize: 256, maxPositionEmbeddings: 256, initializerRange: 0.15)
    static let model: LlamaModel = {
        // A fixed seed and a fixed config: building it cannot fail.
        guard let m = try? LlamaModel.initialized(config: config, seed: 7) else { fatalError("fixture model") }
        return m
    }()

    static func prompt(_ length: Int, seed: UInt64) -> [Int32] {
        var g = SeededGenerator(seed: seed)
        return (0..<length).map { _ in Int32(g.next() % 256) }
    }

    static func engine(blockSize: Int = 16, kvBytes: Int = 16 << 20, maxLength: Int? = nil,
                       limits: SchedulerLimits = .init(maxBatchedTokens: 256, maxRunning: 32, maxWaiting: 256)) throws -> Engine {
        try Engine(model: model, config: EngineConfig(blockSize: blockSize, kvCacheBytes: kvBytes, maxModelLength: maxLength, limits: limits))
    }

    /// Runs a request to its end: the tokens and the finish reason.
    static func run(_ engine: Engine, _ request: GenerationRequest) async throws -> (tokens: [Int32], reason: FinishReason?, logprobs: [TokenLogprobs]) {
        let (stream, c) = AsyncStream<GenerationEvent>.makeStream()
        try engine.submit(request) { e in
            c.yield(e)
            switch e { case .finished, .failed: c.finish(); default: break }
        }
        var tokens: [Int32] = [], reason: FinishReason?, logprobs: [TokenLogprobs] = []
        for await e in stream {
            switch e {
            case let .token(t, lp, _): tokens.append(t); if let lp { logprobs.append(lp) }
            case let .finished(r, _): reason = r
            case let .failed(m): Issue.record("engine failed: \(m)")
            }
        }
        return (tokens, reason, logprobs)
    }

    /// Greedy requests (prompt, max tokens) submitted all at once, so the engine batches them;
    /// each request's tokens, in the order of `cases`.
    static func runTogether(_ engine: Engine, _ cases: [([Int32], Int)]) async throws -> [[Int32]] {
        var out = [[Int32]](repeating: [], count: cases.count)
        try await withThrowingTaskGroup(of: (Int, [Int32]).self) { group in
            for (i, c) in cases.enumerated() {
                group.addTask { (i, try await run(engine, GenerationRequest(prompt: c.0, maxTokens: c.1)).tokens) }
            }
            for try await (i, tokens) in group { out[i] = tokens }
        }
        return out
    }

    /// Greedy tokens of `torus generate`'s path (one sequence, contiguous KV cache).
    static func reference(_ prompt: [Int32], _ n: Int) throws -> [Int32] {
        try model.generate(prompt: prompt, maxNewTokens: n)
    }

    /// Where the engine's greedy tokens differ from the reference, the reference's two best
    /// logits at that step must be within fp32 rounding of each other (a tie the batched
    /// products may break the other way); after such a step the continuations differ legitimately.
    /// `relativeTolerance` widens "fp32 rounding" for models whose rows are rounded further
    /// (bfloat16 layers).
    static func expectSameGreedy(_ got: [Int32], _ want: [Int32], prompt: [Int32], model: LlamaModel = model,
                                 relativeTolerance: Float = 1e-4) throws {
        #expect(got.count == want.count)
        guard let i = zip(got, want).enumerated().first(where: { $0.element.0 != $0.element.1 })?.offset else { return }
        let logits = try model.logits(tokens: prompt + want[..<i], batch: 1, seqLen: prompt.count + i).array
        let row = Array(logits[((prompt.count + i - 1) * 256)...].prefix(256))
        let a: Float = row[Int(got[i])], b: Float = row[Int(want[i])]
        let tolerance: Float = relativeTolerance * max(1, abs(a))
        #expect(abs(a - b) <= tolerance, "token \(i) differs: \(got[i]) vs \(want[i]), logits \(a) vs \(b)")
    }
}

@Suite struct EngineTests {
    @Test func oneRequestMatchesGenerate() async throws {
        let engine = try ServeFixture.engine()
        defer { engine.shutdown() }
        let prompt = ServeFixture.prompt(37, seed: 1)
        let got = try await ServeFixture.run(engine, GenerationRequest(prompt: prompt, maxTokens: 20))
        #expect(got.reason == .length)
        try ServeFixture.expectSameGreedy(got.tokens, try ServeFixture.reference(prompt, 20), prompt: prompt)
    }

    /// 16 requests of mixed lengths batched together (with chunked prefill under a small
    /// budget) give each its own `generate` output.
    @Test func concurrentMixedRequestsMatchGenerate() async throws {
        let engine = try ServeFixture.engine(limits: .init(maxBatchedTokens: 64, maxRunning: 16, maxWaiting: 64))
        defer { engine.shutdown() }
        let cases = (0..<16).map { i in (ServeFixture.prompt(3 + 11 * i, seed: UInt64(100 + i)), 4 + (i * 7) % 23) }
        for (c, tokens) in zip(cases, try await ServeFixture.runTogether(engine, cases)) {
            try ServeFixture.expectSameGreedy(tokens, try ServeFixture.reference(c.0, c.1), prompt: c.0)
        }
        let stats = engine.currentStats
        #expect(stats.finished == 16)
        #expect(stats.usedBlocks == 0)
        #expect(stats.generationTokens == cases.map(\.1).reduce(0, +))
    }

    @Test func repeatedPromptHitsThePrefixCacheOnlyWithTheSameSalt() async throws {
        let engine = try ServeFixture.engine()
        defer { engine.shutdown() }
        let prompt = ServeFixture.prompt(70, seed: 5)
        let first = try await ServeFixture.run(engine, GenerationRequest(prompt: prompt, maxTokens: 8, cacheSalt: "a"))
        #expect(engine.currentStats.prefixHits == 0)
        let second = try await ServeFixture.run(engine, GenerationRequest(prompt: prompt, maxTokens: 8, cacheSalt: "a"))
        #expect(second.tokens == first.tokens)
        // 70 tokens: 4 full blocks of 16 can be reused.
        #expect(engine.currentStats.prefixHits == 64)
        let other = try await ServeFixture.run(engine, GenerationRequest(prompt: prompt, maxTokens: 8, cacheSalt: "b"))
        #expect(other.tokens == first.tokens)
        #expect(engine.currentStats.prefixHits == 64)
        #expect(engine.currentStats.prefixQueries == 3 * 70)
    }

    /// With prefix caching off (vLLM's --no-enable-prefix-caching) a repeated prompt is computed
    /// again: no hit, the same tokens, and its blocks all free afterwards.
    @Test func prefixCachingOffComputesARepeatedPromptAgain() async throws {
        let engine = try Engine(model: ServeFixture.model, config: EngineConfig(
            kvCacheBytes: 16 << 20, limits: .init(maxBatchedTokens: 256, maxRunning: 32, maxWaiting: 256), enablePrefixCaching: false))
        defer { engine.shutdown() }
        let prompt = ServeFixture.prompt(70, seed: 5)
        let first = try await ServeFixture.run(engine, GenerationRequest(prompt: prompt, maxTokens: 8))
        let second = try await ServeFixture.run(engine, GenerationRequest(prompt: prompt, maxTokens: 8))
        #expect(second.tokens == first.tokens)
        #expect(engine.currentStats.prefixHits == 0 && engine.currentStats.usedBlocks == 0)
    }

    /// A pool of 12 blocks for 8 requests that need up to 6 each: requests are preempted and
    /// recomputed, and every one still gets its own greedy output.
    @Test func tooSmallAPoolPreemptsAndStillAnswersCorrectly() async throws {
        let perBlock = 2 * 2 * 16 * 32 * 4
        let engine = try ServeFixture.engine(kvBytes: 12 * perBlock, maxLength: 96,
                                             limits: .init(maxBatchedTokens: 128, maxRunning: 8, maxWaiting: 64))
        defer { engine.shutdown() }
        #expect(engine.blockCount == 12)
        let cases = (0..<8).map { i in (ServeFixture.prompt(20 + 5 * i, seed: UInt64(200 + i)), 40) }
        for (c, tokens) in zip(cases, try await ServeFixture.runTogether(engine, cases)) {
            try ServeFixture.expectSameGreedy(tokens, try ServeFixture.reference(c.0, c.1), prompt: c.0)
        }
        #expect(engine.currentStats.preemptions > 0)
        #expect(engine.currentStats.usedBlocks == 0)
    }

    @Test func abortFreesTheBlocks() async throws {
        let engine = try ServeFixture.engine()
        defer { engine.shutdown() }
        let (stream, c) = AsyncStream<GenerationEvent>.makeStream()
        let box = IDBox()
        // Abort from the event callback after 3 tokens: the engine is faster than any consumer.
        box.id = try engine.submit(GenerationRequest(prompt: ServeFixture.prompt(50, seed: 9), maxTokens: 200)) { e in
            c.yield(e)
            if case .token = e, box.count() == 3, let id = box.id { engine.abort(id) }
            if case .finished = e { c.finish() }
        }
        var count = 0, reason: FinishReason?
        for await e in stream {
            if case .token = e { count += 1 }
            if case let .finished(r, _) = e { reason = r }
        }
        #expect(reason == .abort)
        #expect(count < 10)
        #expect(engine.currentStats.usedBlocks == 0)
        #expect(engine.currentStats.running == 0)
    }

    @Test func seededSamplingIsReproducibleWhateverIsBatched() async throws {
        let engine = try ServeFixture.engine()
        defer { engine.shutdown() }
        let prompt = ServeFixture.prompt(30, seed: 11)
        let sampling = SamplingOptions(temperature: 0.9, topP: 0.95, topK: 50, seed: 1234)
        let alone = try await ServeFixture.run(engine, GenerationRequest(prompt: prompt, maxTokens: 24, sampling: sampling)).tokens
        let crowd = try await withThrowingTaskGroup(of: [Int32]?.self) { group in
            group.addTask { try await ServeFixture.run(engine, GenerationRequest(prompt: prompt, maxTokens: 24, sampling: sampling)).tokens }
            for i in 0..<6 {
                group.addTask {
                    _ = try await ServeFixture.run(engine, GenerationRequest(prompt: ServeFixture.prompt(10 + i, seed: UInt64(i)), maxTokens: 30,
                                                                              sampling: SamplingOptions(temperature: 1, seed: UInt64(i))))
                    return nil
                }
            }
            var mine: [Int32] = []
            for try await r in group { if let r { mine = r } }
            return mine
        }
        #expect(crowd == alone)
        #expect(alone == (try ServeFixture.model.generate(prompt: prompt, maxNewTokens: 24, options: sampling)))
    }

    @Test func stopTokensLogprobsAndRefusals() async throws {
        let engine = try ServeFixture.engine(maxLength: 64)
        defer { engine.shutdown() }
        let prompt = ServeFixture.prompt(12, seed: 3)
        let free = try await ServeFixture.run(engine, GenerationRequest(prompt: prompt, maxTokens: 10, logprobs: 3))
        #expect(free.logprobs.count == 10)
        for (t, lp) in zip(free.tokens, free.logprobs) {
            #expect(lp.top.count == 3)
            #expect(lp.top[0].token == t)                  // greedy: the chosen token is the most likely
            #expect(abs(lp.top[0].logprob - lp.logprob) < 1e-6)
            #expect(lp.logprob <= 0)
        }
        let stopAt = free.tokens[4]
        let firstStop = free.tokens.firstIndex(of: stopAt) ?? 4
        let stopped = try await ServeFixture.run(engine, GenerationRequest(prompt: prompt, maxTokens: 10, stopTokenIDs: [stopAt]))
        #expect(stopped.reason == .stop)
        #expect(stopped.tokens == Array(free.tokens[...firstStop]))
        #expect(throws: EngineError.tooLong(prompt: 12, requested: 60, limit: 64)) {
            try engine.submit(GenerationRequest(prompt: prompt, maxTokens: 60)) { _ in }
        }
        #expect(throws: EngineError.tokenOutOfRange(token: 300, vocab: 256)) {
            try engine.submit(GenerationRequest(prompt: [1, 300], maxTokens: 1)) { _ in }
        }
        #expect(throws: EngineError.emptyPrompt) { try engine.submit(GenerationRequest(prompt: [], maxTokens: 1)) { _ in } }
    }

    @Test func aPoolTooSmallForOneSequenceIsRefusedWithTheSetting() {
        #expect(throws: EngineConfigError.self) { try ServeFixture.engine(kvBytes: 1 << 16) }
        do { _ = try ServeFixture.engine(kvBytes: 1 << 16) } catch {
            #expect("\(error)".contains("kv_cache_memory") && "\(error)".contains("max_model_len 256"), "\(error)")
        }
    }

    @Test func stopStringsEndTheTextAndAreRemoved() async throws {
        let engine = try ServeFixture.engine()
        defer { engine.shutdown() }
        let tokenizer = ByteTokenizer()
        let prompt = ServeFixture.prompt(16, seed: 21).map { $0 % 128 }
        let plain = try await collectText(TextGeneration.start(engine: engine, request: GenerationRequest(prompt: prompt, maxTokens: 12),
                                                               tokenizer: tokenizer))
        let full = tokenizer.decode(try ServeFixture.reference(prompt, 12))
        #expect(plain.text == full)
        // Stop on the text of two generated ASCII tokens: the output is what came before.
        let ref = try ServeFixture.reference(prompt, 12)
        guard let j = (2..<11).first(where: { ref[$0] < 128 && ref[$0 + 1] < 128 }) else {
            Issue.record("the fixture generates no two ASCII tokens in a row: pick another prompt"); return
        }
        let stop = tokenizer.decode(Array(ref[j...(j + 1)]))
        guard let cut = full.range(of: stop) else { Issue.record("stop string \(stop) not in \(full)"); return }
        let stopped = try await collectText(TextGeneration.start(engine: engine, request: GenerationRequest(prompt: prompt, maxTokens: 12),
                                                                 tokenizer: tokenizer, stop: [stop]))
        #expect(stopped.text == String(full[..<cut.lowerBound]))
        #expect(stopped.reason == .stop)
        try await Task.sleep(nanoseconds: 50_000_000)
        #expect(engine.currentStats.usedBlocks == 0)
    }

    func collectText(_ g: TextGeneration) async -> (text: String, reason: FinishReason?) {
        var text = "", reason: FinishReason?
        for await e in g.events {
            if case let .delta(t, _, _, _) = e { text += t }
            if case let .finished(r, _) = e { reason = r }
        }
        return (text, reason)
    }
}

@Suite struct BlockPoolTests {
    @Test func freedBlocksAreReusedFromTheCacheAndEvictedLeastRecentlyFirst() {
        let pool = KVBlockPool(blockCount: 4, blockSize: 2)
        let tokens: [Int32] = [1, 2, 3, 4, 5]
        let hashes = BlockHash.chain(tokens: tokens, blockSize: 2, count: 2, salt: nil)
        guard let a = pool.allocate(3) else { Issue.record("allocation failed"); return }
        pool.register(block: a[0], hash: hashes[0], tokens: tokens[0..<2])
        pool.register(block: a[1], hash: hashes[1], tokens: tokens[2..<4])
        pool.release(a)
        #expect(pool.freeCount == 4)
        #expect(pool.takeCached(hashes: hashes, tokens: tokens) == [a[0], a[1]])
        #expect(pool.freeCount == 2)
        // Content differing from the hash's block is not reused.
        pool.release([a[0], a[1]])
        #expect(pool.takeCached(hashes: hashes, tokens: [1, 2, 9, 9, 5]).count == 1)
        pool.release([a[0]])
        // Taking all four evicts both cached blocks.
        _ = pool.allocate(4)
        #expect(pool.evictions == 2)
        #expect(pool.takeCached(hashes: hashes, tokens: tokens).isEmpty)
    }

    /// Blocks freed without a hash are handed out again first, before never-used blocks and
    /// before cached ones, which stay until the rest is used.
    @Test func blocksWithoutContentAreReusedFirstAndCachedOnesLast() {
        let pool = KVBlockPool(blockCount: 6, blockSize: 2)
        let tokens: [Int32] = [1, 2, 3]
        let hash = BlockHash.chain(tokens: tokens, blockSize: 2, count: 1, salt: nil)
        guard let a = pool.allocate(2) else { Issue.record("allocation failed"); return }
        pool.register(block: a[0], hash: hash[0], tokens: tokens[0..<2])
        pool.release(a)
        #expect(pool.allocate(1) == [a[1]], "the block without a hash comes back first")
        #expect(pool.allocate(4) == [2, 3, 4, 5], "then the never-used ones")
        #expect(pool.evictions == 0 && pool.takeCached(hashes: hash, tokens: tokens) == [a[0]])
    }

    @Test func saltChangesEveryHashOfTheChain() {
        let t: [Int32] = Array(0..<32)
        let a = BlockHash.chain(tokens: t, blockSize: 16, count: 2, salt: nil)
        let b = BlockHash.chain(tokens: t, blockSize: 16, count: 2, salt: "tenant")
        #expect(a[0] != b[0] && a[1] != b[1])
        #expect(a == BlockHash.chain(tokens: t, blockSize: 16, count: 2, salt: nil))
    }
}

/// A request id and a token count shared with the engine's callback.
final class IDBox: @unchecked Sendable {
    private let lock = NSLock()
    private var _id: Int?
    private var tokens = 0
    var id: Int? {
        get { lock.lock(); defer { lock.unlock() }; return _id }
        set { lock.lock(); _id = newValue; lock.unlock() }
    }
    func count() -> Int { lock.lock(); defer { lock.unlock() }; tokens += 1; return tokens }
}
