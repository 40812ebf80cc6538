import Foundation
import Testing
import TorusModel
import TorusServe
import TorusTensor

/// Chunk reuse inside the engine: requests naming document chunks, served from the store in
/// other orders, against `torus generate` on the same prompt.
@Suite struct ChunkReuseEngineTests {
    static func engine(policy: ReusePolicy, store: ChunkStore? = nil, audit: ReuseAudit = ReuseAudit()) throws -> (Engine, ChunkStore) {
        let model = ServeFixture.model
        let store = try store ?? ChunkStore(fingerprint: ChunkReuse.fingerprint(model), memoryBudget: 64 << 20)
        let engine = try Engine(model: model, config: EngineConfig(blockSize: 16, kvCacheBytes: 16 << 20,
                                                                   limits: .init(maxBatchedTokens: 256, maxRunning: 8, maxWaiting: 64)),
                                reuse: ChunkReuse(store: store, policy: policy, tokenizer: "byte", audit: audit))
        return (engine, store)
    }

    /// Documents in the given order, then a question: the prompt and its chunk spans.
    static func request(_ docs: [[Int32]], question: [Int32], maxTokens: Int = 6, policy: ReusePolicy? = nil) -> GenerationRequest {
        var r = GenerationRequest(prompt: docs.flatMap { $0 } + question, maxTokens: maxTokens, ignoreEOS: true)
        var at = 0
        r.chunks = docs.map { d in defer { at += d.count }; return at..<(at + d.count) }
        r.reusePolicy = policy
        return r
    }

    static let docs = (0..<4).map { ServeFixture.prompt(20 + 7 * $0, seed: 100 + UInt64($0)) }
    static let question = ServeFixture.prompt(9, seed: 99)

    /// Runs a request and returns its tokens and reuse report.
    static func run(_ engine: Engine, _ request: GenerationRequest) async throws -> (tokens: [Int32], report: ReuseReport?, cached: Int) {
        let (stream, c) = AsyncStream<GenerationEvent>.makeStream()
        try engine.submit(request) { e in
            c.yield(e)
            switch e { case .finished, .failed: c.finish(); default: break }
        }
        var tokens: [Int32] = [], report: ReuseReport?, cached = 0
        for await e in stream {
            switch e {
            case let .token(t, _, _): tokens.append(t)
            case let .finished(_, timings): report = timings.reuse; cached = timings.cachedTokens
            case let .failed(m): Issue.record("engine failed: \(m)")
            }
        }
        return (tokens, report, cached)
    }

    /// The first request computes and stores its chunks (a full prefill: exact); a later one in
    /// another order finds them all; recomputing every token there is exact again.
    @Test func storedChunksAreFoundInAnotherOrderAndFullRecomputeIsExact() async throws {
        let (engine, store) = try Self.engine(policy: ReusePolicy(method: .cacheblend, ratio: 1))
        defer { engine.shutdown() }
        let first = Self.request(Self.docs, question: Self.question)
        let a = try await Self.run(engine, first)
        try ServeFixture.expectSameGreedy(a.tokens, try ServeFixture.reference(first.prompt, 6), prompt: first.prompt)
        #expect(a.report?.chunks == 4 && a.report?.hits == 0 && a.report?.reusedTokens == 0)
        #expect(a.report?.recomputedTokens == first.prompt.count)
        #expect(store.stats.memoryEntries == 4)

        let shuffled = Self.request([Self.docs[2], Self.docs[0], Self.docs[3], Self.docs[1]], question: Self.question)
        let b = try await Self.run(engine, shuffled)
        try ServeFixture.expectSameGreedy(b.tokens, try ServeFixture.reference(shuffled.prompt, 6), prompt: shuffled.prompt)
        let chunkTokens = Self.docs.map(\.count).reduce(0, +)
        #expect(b.report?.hits == 4 && b.report?.reusedTokens == chunkTokens)
        #expect(b.report?.recomputedTokens == shuffled.prompt.count)
        #expect(engine.currentStats.chunkHits == 4 && engine.currentStats.chunkQueries == 8)
    }

    /// Reuse unchanged computes only the question, and reports the rest as cached.
    @Test func reuseUnchangedComputesOnlyTheQuestion() async throws {
        let (engine, _) = try Self.engine(policy: ReusePolicy(method: .unchanged))
        defer { engine.shutdown() }
        _ = try await Self.run(engine, Self.request(Self.docs, question: Self.question))
        let again = Self.request(Array(Self.docs.reversed()), question: Self.question)
        let r = try await Self.run(engine, again)
        #expect(r.tokens.count == 6)
        #expect(r.report?.recomputedTokens == Self.question.count)
        #expect(r.cached == again.prompt.count - Self.question.count)
        // A request policy overrides the server's: full recompute is exact.
        let full = Self.request(Array(Self.docs.reversed()), question: Self.question, policy: ReusePolicy(method: .full))
        let f = try await Self.run(engine, full)
        try ServeFixture.expectSameGreedy(f.tokens, try ServeFixture.reference(full.prompt, 6), prompt: full.prompt)
        #expect(f.report?.recomputedTokens == full.prompt.count)
    }

    /// CacheBlend at 15% recomputes the question plus the chosen share of document tokens,
    /// then decodes on from the blended cache.
    @Test func cacheBlendRecomputesTheChosenShare() async throws {
        let (engine, _) = try Self.engine(policy: ReusePolicy(method: .cacheblend, ratio: 0.15))
        defer { engine.shutdown() }
        _ = try await Self.run(engine, Self.request(Self.docs, question: Self.question))
        let r = try await Self.run(engine, Self.request([Self.docs[1], Self.docs[3], Self.docs[0], Self.docs[2]], question: Self.question,
                                                         maxTokens: 12))
        let chunkTokens = Self.docs.map(\.count).reduce(0, +)
        let quota = Int((0.15 * Double(chunkTokens)).rounded(.up))
        #expect(r.report?.recomputedTokens == Self.question.count + quota)
        #expect(r.tokens.count == 12)
    }

    /// "epic+cacheblend": every cached chunk's first tokens, then CacheBlend's share chosen
    /// among the other cached tokens. Only combinations with a selector of cached tokens exist.
    @Test func epicCombinesWithCacheBlend() async throws {
        var policy = ReusePolicy(ratio: 0.15, firstTokens: 4)
        #expect(policy.select("epic+cacheblend") && policy.method == .cacheblend && policy.plusFirstTokens)
        #expect(policy.name == "epic+cacheblend" && policy.summary == "epic first 4 + cacheblend r=0.15")
        var other = ReusePolicy()
        #expect(!other.select("epic+full") && !other.select("epic+epic") && other.select("epic+cachecraft"))
        let (engine, _) = try Self.engine(policy: policy)
        defer { engine.shutdown() }
        _ = try await Self.run(engine, Self.request(Self.docs, question: Self.question))
        let r = try await Self.run(engine, Self.request([Self.docs[1], Self.docs[3], Self.docs[0], Self.docs[2]], question: Self.question))
        let chunkTokens = Self.docs.map(\.count).reduce(0, +)
        let quota = Int((0.15 * Double(chunkTokens)).rounded(.up))
        #expect(Self.docs.allSatisfy { $0.count > 4 })
        #expect(r.report?.recomputedTokens == Self.question.count + 4 * Self.docs.count + quota)
    }

    /// Gradual filtering keeps twice the ratio at the check layer and the ratio after the next
    /// layer: it recomputes the same number of tokens as CacheBlend and spends more FLOPs (the
    /// wider layer after the check; the test model has two layers, so the checks are 0 and 1).
    @Test func gradualFilteringNarrowsOverTwoLayers() async throws {
        func run(_ policy: ReusePolicy) async throws -> ReuseReport {
            let (engine, _) = try Self.engine(policy: policy)
            defer { engine.shutdown() }
            _ = try await Self.run(engine, Self.request(Self.docs, question: Self.question))
            return try #require(try await Self.run(engine, Self.request(Array(Self.docs.reversed()), question: Self.question)).report)
        }
        let gradual = try await run(ReusePolicy(method: .gradual, ratio: 0.15, checkLayer: 0))
        let blend = try await run(ReusePolicy(method: .cacheblend, ratio: 0.15, checkLayer: 0))
        let chunkTokens = Self.docs.map(\.count).reduce(0, +)
        #expect(gradual.recomputedTokens == Self.question.count + Int((0.15 * Double(chunkTokens)).rounded(.up)))
        #expect(gradual.recomputedTokens == blend.recomputedTokens)
        #expect(gradual.flops > blend.flops, "gradual \(gradual.flops) vs cacheblend \(blend.flops)")
    }

    /// Two tenants' salts never share chunk KV.
    @Test func saltsIsolateTenants() async throws {
        let (engine, _) = try Self.engine(policy: ReusePolicy(method: .unchanged))
        defer { engine.shutdown() }
        var a = Self.request(Self.docs, question: Self.question)
        a.cacheSalt = "tenant-a"
        _ = try await Self.run(engine, a)
        var b = a
        b.cacheSalt = "tenant-b"
        #expect(try await Self.run(engine, b).report?.hits == 0)
        #expect(try await Self.run(engine, a).report?.hits == 4)
    }

    /// The quality gate: an audited reuse request measures its divergence from full prefill;
    /// past the bound its chunks are computed in full from then on (exact again).
    @Test func anAuditPastTheBoundDisablesTheChunks() async throws {
        let (engine, _) = try Self.engine(policy: ReusePolicy(method: .unchanged), audit: ReuseAudit(share: 1, maxKL: 0))
        defer { engine.shutdown() }
        _ = try await Self.run(engine, Self.request(Self.docs, question: Self.question))
        let reordered = Self.request(Array(Self.docs.reversed()), question: Self.question)
        let audited = try await Self.run(engine, reordered)
        let audit = try #require(audited.report?.audit)
        #expect(audit.kl > 0 && audit.disabledChunks == 4)
        #expect(engine.currentStats.disabledChunks == 4)
        let after = try await Self.run(engine, reordered)
        #expect(after.report?.disabled == 4 && after.report?.hits == 0 && after.report?.audit == nil)
        try ServeFixture.expectSameGreedy(after.tokens, try ServeFixture.reference(reordered.prompt, 6), prompt: reordered.prompt)
        // A generous bound measures without disabling anything.
        let (lenient, _) = try Self.engine(policy: ReusePolicy(method: .unchanged), audit: ReuseAudit(share: 1, maxKL: 1e9))
        defer { lenient.shutdown() }
        _ = try await Self.run(lenient, Self.request(Self.docs, question: Self.question))
        let measured = try await Self.run(lenient, reordered)
        #expect(measured.report?.audit?.disabledChunks == 0 && lenient.currentStats.disabledChunks == 0)
        #expect(try await Self.run(lenient, reordered).report?.hits == 4)
    }

    /// Cache-Craft: the same context recomputes nothing (beta' = 1); a reordered prefix
    /// recomputes a share of the reused chunks chosen from their recorded statistics.
    @Test func cacheCraftRecomputesMoreWhenTheContextChanges() async throws {
        let (engine, store) = try Self.engine(policy: ReusePolicy(method: .cachecraft, alpha: 1))
        defer { engine.shutdown() }
        let first = Self.request(Self.docs, question: Self.question)
        _ = try await Self.run(engine, first)
        let key = store.key(tokens: Self.docs[2], tokenizer: "byte", salt: nil)
        let v = try #require(store.lookup(key: key, context: ChunkStore.context(first.prompt[0..<(Self.docs[0].count + Self.docs[1].count)]),
                                          tokens: Self.docs[2]))
        #expect(v.stats?.priorMass.count == 2 && v.priorChunks.count == 2 && !v.approximate)
        let same = try await Self.run(engine, Self.request(Self.docs, question: Self.question, maxTokens: 3))
        #expect(same.report?.hits == 4 && same.report?.recomputedTokens == Self.question.count)
        let moved = try await Self.run(engine, Self.request([Self.docs[3], Self.docs[1], Self.docs[0], Self.docs[2]], question: Self.question,
                                                            maxTokens: 3))
        #expect((moved.report?.recomputedTokens ?? 0) > Self.question.count + 4)
    }
}
