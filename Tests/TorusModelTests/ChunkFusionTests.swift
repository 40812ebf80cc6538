import Foundation
import Testing
import TorusTensor
@testable import TorusModel

/// The exactness tests of chunk reuse (CHUNK_REUSE.md): each compares fusion with a prefill
/// computed another way and can fail.
@Suite struct ChunkFusionTests {
    static let config = LlamaConfig(hiddenSize: 32, intermediateSize: 48, numHiddenLayers: 3, numAttentionHeads: 4,
                                    numKeyValueHeads: 2, vocabSize: 48, maxPositionEmbeddings: 256)

    static func model() throws -> LlamaModel {
        let m = try LlamaModel.initialized(config: config, seed: 21)
        try m.prepareServing(maxPositions: 256)
        return m
    }

    /// A prompt of three chunks and a question.
    static let chunks: [[Int32]] = [(0..<17).map { Int32(($0 * 7 + 3) % 48) }, (0..<23).map { Int32(($0 * 5 + 11) % 48) },
                                    (0..<19).map { Int32(($0 * 11 + 1) % 48) }]
    static let question: [Int32] = [5, 9, 2, 40, 33, 7]
    static var tokens: [Int32] { chunks.flatMap { $0 } + question }
    static var chunkRows: Int { chunks.reduce(0) { $0 + $1.count } }

    /// Runs `tokens` at positions `start...` through the batched step; keys and values go to
    /// `kv` at rows equal to their positions and each row attends to rows keyStart...its position.
    /// Returns the last row's logits.
    static func denseStep(_ model: LlamaModel, tokens: [Int32], start: Int, keyStart: Int, kv: PromptKV) throws -> [Float] {
        let n = tokens.count, shape = model.config.attentionShape, kw = shape.keyValueWidth
        let workspace = StepWorkspace(config: model.config, rowCapacity: n, logitCapacity: 1)
        let partOut = Tensor(zeros: [n, shape.queryWidth]), partLSE = Tensor(zeros: [n, shape.queryHeads])
        let logits = try model.step(tokens: tokens, positions: (start..<(start + n)).map { Int32($0) }, logitRows: [n - 1],
                                    workspace: workspace) { l, q, k, v, o, lse in
            (kv.keys[l].pointer + start * kw).update(from: k.pointer, count: n * kw)
            (kv.values[l].pointer + start * kw).update(from: v.pointer, count: n * kw)
            let run = BlockAttention.KeyRun(k: kv.keys[l].pointer + keyStart * kw, v: kv.values[l].pointer + keyStart * kw,
                                            start: keyStart, count: start + n - keyStart)
            BlockAttention.forward(q: q.pointer, queryCount: n, queryStart: start, runs: [run], shape: shape, out: o.pointer,
                                   lse: lse.pointer, partOut: partOut.pointer, partLSE: partLSE.pointer)
        }
        return Array(UnsafeBufferPointer(start: logits.pointer, count: model.config.vocabSize))
    }

    /// Full prefill through the training forward pass (logits) and the batched step (keys and values).
    static func fullPrefill(_ model: LlamaModel, _ tokens: [Int32]) throws -> (logits: [Float], kv: PromptKV) {
        let n = tokens.count, vocab = model.config.vocabSize
        let all = try model.logits(tokens: tokens, batch: 1, seqLen: n)
        let logits = Array(UnsafeBufferPointer(start: all.pointer + (n - 1) * vocab, count: vocab))
        let kv = PromptKV(config: model.config, rows: n)
        _ = try denseStep(model, tokens: tokens, start: 0, keyStart: 0, kv: kv)
        return (logits, kv)
    }

    /// Each chunk computed alone (positions from 0), relocated to its place in the prompt.
    static func chunksAlone(_ model: LlamaModel) throws -> PromptKV {
        try model.chunksComputedAlone(chunks, rows: tokens.count)
    }

    static var cachedFlags: [Bool] { (0..<tokens.count).map { $0 < chunkRows } }

    static func maxDifference(_ a: [Float], _ b: [Float]) -> Float { zip(a, b).map { abs($0 - $1) }.max() ?? 0 }

    static func maxDifference(_ a: PromptKV, _ b: PromptKV, rows: Int) -> Float {
        var worst: Float = 0
        for l in a.keys.indices {
            for t in [(a.keys[l], b.keys[l]), (a.values[l], b.values[l])] {
                for i in 0..<(rows * a.width) { worst = max(worst, abs(t.0.pointer[i] - t.1.pointer[i])) }
            }
        }
        return worst
    }

    static func argmax(_ a: [Float]) -> Int { a.indices.max { a[$0] < a[$1] } ?? 0 }

    /// Test 1: recomputing every row (r = 1) is full prefill, whatever the cache held.
    @Test func recomputingEveryRowEqualsFullPrefill() throws {
        let model = try Self.model()
        let reference = try Self.fullPrefill(model, Self.tokens)
        for policy in [RecomputePolicy.full, .cacheBlend(ratio: 1), .cacheBlend(ratio: 1, checkLayer: 2)] {
            let kv = try Self.chunksAlone(model)
            let result = try model.fuse(tokens: Self.tokens, cached: Self.cachedFlags, kv: kv, policy: policy)
            #expect(Self.maxDifference(result.logits, reference.logits) < 1e-4, "\(policy)")
            #expect(Self.argmax(result.logits) == Self.argmax(reference.logits))
            #expect(Self.maxDifference(kv, reference.kv, rows: Self.tokens.count) < 1e-4)
            #expect(result.recomputedCachedRows.count == Self.chunkRows)
        }
    }

    /// Test 2: with cached KV taken from the same full prefill, any recomputed set gives full
    /// prefill with the per-row mask; the bottom-right mask does not.
    @Test func freshCacheWithARandomSelectionEqualsFullPrefillOnlyWithTheExactMask() throws {
        let model = try Self.model()
        let reference = try Self.fullPrefill(model, Self.tokens)
        var g = SeededGenerator(seed: 5)
        for trial in 0..<3 {
            let forced = (0..<Self.chunkRows).filter { _ in g.next() % 4 == 0 }
            let exactKV = try Self.fullPrefill(model, Self.tokens).kv
            let exact = try model.fuse(tokens: Self.tokens, cached: Self.cachedFlags, kv: exactKV,
                                       policy: RecomputePolicy(forcedRows: forced))
            #expect(Self.maxDifference(exact.logits, reference.logits) < 1e-4, "trial \(trial)")
            #expect(Self.maxDifference(exactKV, reference.kv, rows: Self.tokens.count) < 1e-4)
            #expect(exact.recomputedCachedRows == forced)

            let shiftedKV = try Self.fullPrefill(model, Self.tokens).kv
            let faithful = try model.fuse(tokens: Self.tokens, cached: Self.cachedFlags, kv: shiftedKV,
                                          policy: RecomputePolicy(forcedRows: forced, mask: .bottomRight))
            #expect(Self.maxDifference(faithful.logits, reference.logits) > 1e-3, "the bottom-right mask passed trial \(trial)")
            #expect(Self.maxDifference(shiftedKV, reference.kv, rows: Self.tokens.count) > 1e-3)
        }
    }

    /// Test 3: r = 0 with chunks captured in this very context is prefix caching: the prefix's
    /// keys and values from one step, the question computed against them in another.
    @Test func reuseOfAVariantFromTheSameContextEqualsPrefixCaching() throws {
        let model = try Self.model()
        let n = Self.tokens.count, prefix = Self.chunkRows
        let prefixCached = PromptKV(config: model.config, rows: n)
        _ = try Self.denseStep(model, tokens: Array(Self.tokens[0..<prefix]), start: 0, keyStart: 0, kv: prefixCached)
        let reference = try Self.denseStep(model, tokens: Array(Self.tokens[prefix...]), start: prefix, keyStart: 0, kv: prefixCached)
        for policy in [RecomputePolicy.unchanged, .cacheBlend(ratio: 0)] {
            let kv = try Self.fullPrefill(model, Self.tokens).kv
            let result = try model.fuse(tokens: Self.tokens, cached: Self.cachedFlags, kv: kv, policy: policy)
            #expect(Self.maxDifference(result.logits, reference) < 1e-4, "\(policy)")
            #expect(Self.maxDifference(kv, prefixCached, rows: n) < 1e-4)
            #expect(result.recomputedCachedRows.isEmpty)
        }
        // Reuse unchanged really skips the chunks: three layers of the question only.
        let kv = try Self.fullPrefill(model, Self.tokens).kv
        let unchanged = try model.fuse(tokens: Self.tokens, cached: Self.cachedFlags, kv: kv, policy: .unchanged)
        #expect(unchanged.computedRows == [Self.question.count, Self.question.count, Self.question.count])
    }

    /// Test 4: a chunk's keys and values computed alone at one position and moved to another
    /// equal those computed alone there, both ways.
    @Test func relocatedChunkEqualsTheChunkComputedThere() throws {
        let model = try Self.model()
        let chunk = Self.chunks[1], c = chunk.count, kw = model.config.attentionShape.keyValueWidth
        for (from, to) in [(0, 37), (90, 3), (5, 5 + 150)] {
            let moved = PromptKV(config: model.config, rows: from + c), there = PromptKV(config: model.config, rows: to + c)
            _ = try Self.denseStep(model, tokens: chunk, start: from, keyStart: from, kv: moved)
            _ = try Self.denseStep(model, tokens: chunk, start: to, keyStart: to, kv: there)
            var worst: Float = 0, worstUnmoved: Float = 0
            for l in 0..<model.config.numHiddenLayers {
                let k = Tensor(zeros: [c, kw])
                k.pointer.update(from: moved.keys[l].pointer + from * kw, count: c * kw)
                for i in 0..<(c * kw) { worstUnmoved = max(worstUnmoved, abs(k.pointer[i] - there.keys[l].pointer[to * kw + i])) }
                model.relocateKeys(k.pointer, rows: c, by: to - from)
                for i in 0..<(c * kw) {
                    worst = max(worst, abs(k.pointer[i] - there.keys[l].pointer[to * kw + i]))
                    worst = max(worst, abs(moved.values[l].pointer[from * kw + i] - there.values[l].pointer[to * kw + i]))
                }
            }
            #expect(worst < 1e-4, "moved \(from) -> \(to)")
            #expect(worstUnmoved > 1e-2, "keys do not depend on position \(from) -> \(to)")
        }
    }

    /// CacheBlend's selection: the check layer keeps the requested share of the cached rows,
    /// and all of them give full prefill.
    @Test func cacheBlendKeepsTheRequestedShare() throws {
        let model = try Self.model()
        let reference = try Self.fullPrefill(model, Self.tokens)
        var errors: [Float] = []
        for ratio in [0.0, 0.25, 0.5, 1.0] {
            let kv = try Self.chunksAlone(model)
            let result = try model.fuse(tokens: Self.tokens, cached: Self.cachedFlags, kv: kv, policy: .cacheBlend(ratio: ratio))
            let quota = Int((ratio * Double(Self.chunkRows) - 1e-9).rounded(.up))
            #expect(result.recomputedCachedRows.count == quota)
            #expect(result.computedRows == [Self.tokens.count, Self.question.count + quota, Self.question.count + quota])
            #expect(result.projectedRows == [Self.tokens.count, Self.tokens.count, Self.question.count + quota])
            errors.append(Self.maxDifference(result.logits, reference.logits))
        }
        #expect(errors[0] > 1e-3, "chunks computed alone already equal full prefill: the test says nothing")
        #expect(errors[3] < 1e-4)
    }

    /// Gradual filtering (two check layers): 2r of the cached rows kept at layer 0, r of those
    /// from layer 1 on; keeping everything at both is full prefill.
    @Test func gradualFilteringNarrowsAtEachCheckLayer() throws {
        let model = try Self.model()
        let kv = try Self.chunksAlone(model)
        let policy = RecomputePolicy(checks: [.init(layer: 0, ratio: 0.5), .init(layer: 1, ratio: 0.25)])
        let result = try model.fuse(tokens: Self.tokens, cached: Self.cachedFlags, kv: kv, policy: policy)
        let (wide, narrow) = (Int((0.5 * Double(Self.chunkRows)).rounded(.up)), Int((0.25 * Double(Self.chunkRows)).rounded(.up)))
        #expect(result.projectedRows == [Self.tokens.count, Self.question.count + wide, Self.question.count + narrow])
        #expect(result.computedRows == [Self.question.count + wide, Self.question.count + narrow, Self.question.count + narrow])
        #expect(result.recomputedCachedRows.count == narrow)
        let reference = try Self.fullPrefill(model, Self.tokens)
        let all = try model.fuse(tokens: Self.tokens, cached: Self.cachedFlags, kv: try Self.chunksAlone(model),
                                 policy: RecomputePolicy(checks: [.init(layer: 0, ratio: 1), .init(layer: 1, ratio: 1)]))
        #expect(Self.maxDifference(all.logits, reference.logits) < 1e-4)
    }

    @Test func badPoliciesAreRefused() throws {
        let model = try Self.model()
        let kv = PromptKV(config: model.config, rows: Self.tokens.count)
        #expect(throws: ModelInputError.self) {
            try model.fuse(tokens: Self.tokens, cached: Self.cachedFlags, kv: kv, policy: .cacheBlend(ratio: 0.1, checkLayer: 3))
        }
        #expect(throws: ModelInputError.self) {
            try model.fuse(tokens: Self.tokens, cached: Self.cachedFlags, kv: kv, policy: RecomputePolicy(forcedRows: [999]))
        }
        #expect(throws: ModelInputError.self) {
            try model.fuse(tokens: Self.tokens, cached: [true], kv: kv, policy: .full)
        }
    }

    /// Cache-Craft's statistics: per chunk, the mass on what precedes it and on itself sum to
    /// one; with chunks covering the prefix, the masses on earlier chunks add up to the
    /// prefix mass; the first chunk sees nothing before it.
    @Test func attentionStatisticsAddUp() throws {
        let model = try Self.model()
        var spans: [Range<Int>] = [], at = 0
        for c in Self.chunks { spans.append(at..<(at + c.count)); at += c.count }
        let kv = PromptKV(config: model.config, rows: Self.tokens.count)
        let result = try model.fuse(tokens: Self.tokens, cached: [Bool](repeating: false, count: Self.tokens.count), kv: kv,
                                    policy: .full, statistics: spans)
        #expect(result.statistics.count == 3)
        for (i, s) in result.statistics.enumerated() {
            let prefix = s.tokenPrefixMass.reduce(0, +) / Float(s.tokenPrefixMass.count)
            #expect(abs(prefix + s.selfMass - 1) < 1e-4, "chunk \(i): \(prefix) + \(s.selfMass)")
            #expect(abs(s.priorMass.reduce(0, +) - prefix) < 1e-4)
            #expect(s.priorMass.count == i && s.tokenPrefixMass.count == spans[i].count)
            #expect(i == 0 ? prefix == 0 : prefix > 0.05)
            #expect(s.cci > 0.5 || i == 0)
        }
        // The statistics do not change the prefill.
        let plain = try model.fuse(tokens: Self.tokens, cached: [Bool](repeating: false, count: Self.tokens.count),
                                   kv: PromptKV(config: model.config, rows: Self.tokens.count), policy: .full)
        #expect(plain.logits == result.logits)
    }
}
