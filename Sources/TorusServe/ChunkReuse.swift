import Foundation
import TorusModel
import TorusTensor

/// How a request with retrieved chunks is prefilled.
public struct ReusePolicy: Sendable, Equatable {
    public enum Method: String, Sendable, CaseIterable {
        /// Full prefill (chunks are still captured for later requests).
        case full
        /// Cached chunks reused as they are; only uncached tokens computed.
        case unchanged
        /// CacheBlend: every token through the check layer, then the `ratio` of cached tokens
        /// whose values deviate most.
        case cacheblend
        /// CacheBlend with the bottom-right mask of its public code (to measure the exact mask).
        case faithful
        /// CacheBlend's gradual filtering: twice `ratio` kept at the check layer, `ratio` of
        /// those from the next layer on (by their deviation there).
        case gradual
        /// EPIC: the first `firstTokens` tokens of every cached chunk.
        case epic
        /// Cache-Craft: per chunk, a share CFO = alpha x CCI x (1 - beta') of its tokens, those
        /// that attended most to the chunks before them when captured; no check layer.
        case cachecraft
    }

    public var method: Method
    /// Also recompute the first `firstTokens` tokens of every cached chunk (EPIC's choice)
    /// besides the method's own: the combinations "epic+cacheblend", "epic+gradual",
    /// "epic+cachecraft", "epic+faithful".
    public var plusFirstTokens = false
    public var ratio: Double
    public var checkLayer: Int
    public var firstTokens: Int
    /// Cache-Craft's scale of the recompute fraction (tuned for a quality target).
    public var alpha: Double

    public init(method: Method = .cacheblend, ratio: Double = 0.15, checkLayer: Int = 1, firstTokens: Int = 16, alpha: Double = 1) {
        self.method = method
        self.ratio = ratio
        self.checkLayer = checkLayer
        self.firstTokens = firstTokens
        self.alpha = alpha
    }

    /// Every policy name: the methods and their combinations with EPIC's first tokens.
    public static let names: [String] = Method.allCases.map(\.rawValue)
        + [Method.cacheblend, .faithful, .gradual, .cachecraft].map { "epic+" + $0.rawValue }

    /// Sets the method (and the EPIC combination) from a policy name; false for an unknown name.
    public mutating func select(_ name: String) -> Bool {
        let combined = name.hasPrefix("epic+")
        guard let m = Method(rawValue: combined ? String(name.dropFirst(5)) : name),
              !combined || [.cacheblend, .faithful, .gradual, .cachecraft].contains(m) else { return false }
        method = m
        plusFirstTokens = combined
        return true
    }

    /// Why a knob that was set does not apply to this policy's method (nil: both apply): the
    /// ratio is the check-layer selectors' share, alpha Cache-Craft's scale. `ratio` and `alpha`
    /// name the knobs as the caller's user set them (a flag, a config key, a request field).
    public func misplacedKnob(ratio: String?, alpha: String?, alphaName: String) -> String? {
        if let ratio, method == .cachecraft { return "\(ratio) does not apply to cachecraft, whose recomputed share is set by \(alphaName)" }
        if let alpha, method != .cachecraft { return "\(alpha) applies to cachecraft only, not \(name)" }
        return nil
    }

    /// The policy's name as `select` takes it.
    public var name: String { (plusFirstTokens ? "epic+" : "") + method.rawValue }

    /// The method and its knob: "cacheblend r=0.15", "cachecraft alpha=1.00", "epic first 16".
    public var summary: String {
        guard !plusFirstTokens else { return "epic first \(firstTokens) + " + Self(method: method, ratio: ratio, checkLayer: checkLayer, alpha: alpha).summary }
        return switch method {
        case .full, .unchanged: method.rawValue
        case .cacheblend, .faithful, .gradual: String(format: "%@ r=%.2f", method.rawValue, ratio)
        case .epic: "epic first \(firstTokens)"
        case .cachecraft: String(format: "cachecraft alpha=%.2f", alpha)
        }
    }

    /// The first `firstTokens` cached rows of every chunk (EPIC's choice).
    func firstRows(spans: [Range<Int>], cached: [Bool]) -> [Int] {
        spans.flatMap { s in s.prefix(firstTokens).filter { cached[$0] } }
    }

    /// The fusion policy for a prompt whose chunks are `spans` (cached ones flagged).
    func recompute(spans: [Range<Int>], cached: [Bool], layers: Int) -> RecomputePolicy {
        let check = min(checkLayer, max(layers - 1, 0))
        switch method {
        case .full: return .full
        case .unchanged: return .unchanged
        case .cacheblend: return .cacheBlend(ratio: ratio, checkLayer: check)
        case .faithful: return .cacheBlend(ratio: ratio, checkLayer: check, mask: .bottomRight)
        case .gradual:
            guard check + 1 < layers else { return .cacheBlend(ratio: ratio, checkLayer: check) }
            return RecomputePolicy(checks: [.init(layer: check, ratio: min(1, 2 * ratio)), .init(layer: check + 1, ratio: ratio)])
        case .epic:
            return RecomputePolicy(forcedRows: firstRows(spans: spans, cached: cached))
        case .cachecraft:
            // Chosen per chunk from its recorded statistics (ChunkReuse.cacheCraftRows).
            return .unchanged
        }
    }

    /// Cache-Craft's recompute fraction of a chunk captured after `old` (keys in order) with
    /// `stats`, now placed after `new`: beta = share of the recorded inter-chunk attention that
    /// went to chunks also before it now, gamma = normalised Kendall-tau distance between the
    /// orders of those chunks, CFO = clamp(alpha x CCI x (1 - beta (1 - gamma)), 0, 1).
    static func cacheCraftFraction(stats: ChunkAttentionStats, old: [String], new: [String], alpha: Double) -> Double {
        let now = Set(new)
        let total = stats.priorMass.reduce(0, +)
        var kept: Float = 0
        for (i, k) in old.enumerated() where i < stats.priorMass.count && now.contains(k) { kept += stats.priorMass[i] }
        let beta = total > 0 ? Double(kept / total) : (old.isEmpty && new.isEmpty ? 1 : 0)
        let shared = old.filter { now.contains($0) }
        let position = Dictionary(new.enumerated().map { ($1, $0) }, uniquingKeysWith: { a, _ in a })
        var discordant = 0, pairs = 0
        for i in shared.indices {
            for j in shared.indices where j > i {
                pairs += 1
                if (position[shared[i]] ?? 0) > (position[shared[j]] ?? 0) { discordant += 1 }
            }
        }
        let gamma = pairs == 0 ? 0 : Double(discordant) / Double(pairs)
        let betaPrime = beta * (1 - gamma)
        return min(1, max(0, alpha * stats.cci * (1 - betaPrime)))
    }
}

/// The quality gate: a share of reuse requests also runs full prefill, and chunks whose
/// reuse diverges too far are computed in full from then on.
public struct ReuseAudit: Sendable, Equatable {
    /// Share of reuse requests audited (0: none, 1: all).
    public var share: Double
    /// KL(full || reuse) at the first generated token above which the request's reused chunks
    /// are disabled.
    public var maxKL: Double
    public var seed: UInt64

    public init(share: Double = 0, maxKL: Double = 0.1, seed: UInt64 = 0x5EED) {
        self.share = share
        self.maxKL = maxKL
        self.seed = seed
    }
}

/// One audit's measurement.
public struct AuditResult: Sendable, Equatable {
    /// KL(p_full || p_reuse) of the first generated token's distribution, in nats.
    public var kl: Double
    /// Whether both pick the same most likely token.
    public var top1Agrees: Bool
    /// Chunks disabled by this audit.
    public var disabledChunks: Int
}

/// What a reuse prefill did, for usage and metrics.
public struct ReuseReport: Sendable, Equatable {
    public var chunks = 0
    public var hits = 0
    /// Chunks found but not reused because an audit disabled them.
    public var disabled = 0
    /// Set when this request was audited.
    public var audit: AuditResult?
    /// Prompt tokens whose KV came from the store.
    public var reusedTokens = 0
    /// Of those, tokens recomputed anyway (selected), plus every uncached token.
    public var recomputedTokens = 0
    public var flops = 0.0
}

/// Chunk-KV reuse for the engine: looks up each chunk of a prompt in the store, lays the
/// cached KV at the chunk's positions (rotation moved exactly), runs the fusion prefill, and
/// stores the chunks it had to compute for later requests.
public final class ChunkReuse: @unchecked Sendable {
    public let store: ChunkStore
    public let policy: ReusePolicy
    /// Identity of the tokenizer (part of every chunk key).
    public let tokenizer: String

    public let audit: ReuseAudit
    let log: @Sendable (String) -> Void
    /// Keys (hex) of chunks an audit found too far from full prefill: computed in full from now on.
    private(set) var disabledKeys = Set<String>()
    private var auditDraws: SeededGenerator

    public init(store: ChunkStore, policy: ReusePolicy, tokenizer: String, audit: ReuseAudit = ReuseAudit(),
                log: @escaping @Sendable (String) -> Void = { _ in }) {
        self.store = store
        self.policy = policy
        self.tokenizer = tokenizer
        self.audit = audit
        self.log = log
        auditDraws = SeededGenerator(seed: audit.seed)
    }

    /// Chunks disabled by audits so far.
    public var disabledChunkCount: Int { disabledKeys.count }

    /// A fingerprint of a model: its configuration and a strided sample of its weights.
    public static func fingerprint(_ model: LlamaModel) -> String {
        var h = SHA256()
        h.update(String(describing: model.config))
        // KV computed with bfloat16 layers differs from float32's: stores keep them apart
        // (float32 keeps the fingerprint it had before bfloat16 existed).
        if model.inferencePrecision != .float32 { h.update(model.inferencePrecision.rawValue) }
        let p = model.parameters.flat
        h.update(p.count)
        let stride = max(1, p.count / 65_536)
        var i = 0
        while i < p.count {
            withUnsafeBytes(of: p.pointer[i].bitPattern.littleEndian) { h.update($0) }
            i += stride
        }
        return h.finalize().hex
    }

    /// Prefills `tokens` whose chunks are `spans` into `kv` and returns the last row's logits.
    public func prefill(model: LlamaModel, tokens: [Int32], spans: [Range<Int>], salt: String?, policy override: ReusePolicy?,
                 kv: PromptKV) throws -> (logits: [Float], report: ReuseReport) {
        var prepared = try prepare(model: model, tokens: tokens, spans: spans, salt: salt, policy: override, kv: kv)
        let result = try model.fuse(tokens: tokens, cached: prepared.cached, kv: kv, policy: prepared.recompute,
                                    statistics: prepared.capturesStatistics ? spans : [])
        if drawsAudit(prepared) {
            prepared.report.audit = try audit(prepared, model: model, tokens: tokens, logits: result.logits)
        }
        return (result.logits, complete(prepared, model: model, tokens: tokens, result: result))
    }

    /// A reuse prefill laid out: every stored chunk's KV in place, and what to compute.
    public struct Preparation {
        /// Per prompt row: whether its keys and values came from the store.
        public let cached: [Bool]
        /// The rows to compute (the request's selector applied to the chunks found).
        public let recompute: RecomputePolicy
        /// Chunks not found: computed here, then stored.
        public let missed: [Range<Int>]
        /// Whether the fusion records Cache-Craft statistics (a full prefill of new chunks).
        public let capturesStatistics: Bool
        public var report: ReuseReport
        let kv: PromptKV
        let spans: [Range<Int>]
        let keys: [[UInt8]]
        let reusedKeys: [String]
    }

    /// Looks up each chunk of `tokens` (`spans`) and lays the stored KV of those found into
    /// `kv` at their positions (rotation moved exactly); chooses the rows to recompute.
    public func prepare(model: LlamaModel, tokens: [Int32], spans: [Range<Int>], salt: String?, policy override: ReusePolicy?,
                        kv: PromptKV) throws -> Preparation {
        let n = tokens.count, layers = model.config.numHiddenLayers, kw = kv.width
        guard kv.rows >= n, spans.allSatisfy({ $0.lowerBound >= 0 && $0.upperBound <= n }) else {
            throw ModelInputError.shapeMismatch("chunks \(spans) of a prompt of \(n) tokens in a cache of \(kv.rows) rows")
        }
        var cached = [Bool](repeating: false, count: n)
        var report = ReuseReport()
        report.chunks = spans.count
        var missed: [Range<Int>] = [], reusedKeys: [String] = []
        var found: [(span: Range<Int>, variant: ChunkVariant)] = []
        // Each chunk's key once (SHA-256 over its tokens), for lookup, statistics and storing.
        let keyBytes = spans.map { store.key(tokens: Array(tokens[$0]), tokenizer: tokenizer, salt: salt) }
        let keys = keyBytes.map(\.hex)
        for (index, s) in spans.enumerated() {
            let chunk = Array(tokens[s])
            let key = keyBytes[index]
            if disabledKeys.contains(key.hex) {
                report.disabled += 1
                continue
            }
            // Cache-Craft keeps the variant that needs the least recompute after these chunks.
            let prior = Array(keys[0..<index]), alpha = (override ?? policy).alpha
            let cfo: ((_ priorChunks: [String], _ stats: ChunkAttentionStats) -> Double)? = (override ?? policy).method == .cachecraft
                ? { ReusePolicy.cacheCraftFraction(stats: $1, old: $0, new: prior, alpha: alpha) } : nil
            guard let v = store.lookup(key: key, context: ChunkStore.context(tokens[0..<s.lowerBound]), tokens: chunk, recompute: cfo),
                  v.layers == layers, v.width == kw else {
                missed.append(s)
                continue
            }
            v.data.withUnsafeBufferPointer { kv.unpack($0, rows: Array(s)) }
            for l in 0..<layers {
                model.relocateKeys(kv.keys[l].pointer + s.lowerBound * kw, rows: s.count, by: s.lowerBound - v.start)
            }
            for j in s { cached[j] = true }
            reusedKeys.append(key.hex)
            found.append((s, v))
            report.hits += 1
            report.reusedTokens += s.count
        }
        let chosen = override ?? policy
        var fusion = report.hits == 0 ? RecomputePolicy.full : chosen.recompute(spans: spans, cached: cached, layers: layers)
        if report.hits > 0 && chosen.method == .cachecraft {
            fusion = RecomputePolicy(forcedRows: Self.cacheCraftRows(found: found, spans: spans, keys: keys, alpha: chosen.alpha))
        }
        if report.hits > 0 && chosen.plusFirstTokens {
            fusion.forcedRows = Array(Set(fusion.forcedRows).union(chosen.firstRows(spans: spans, cached: cached))).sorted()
        }
        // A full prefill records how each chunk attends, for Cache-Craft's choice later.
        return Preparation(cached: cached, recompute: fusion, missed: missed, capturesStatistics: fusion.everyRow && !missed.isEmpty,
                           report: report, kv: kv, spans: spans, keys: keyBytes, reusedKeys: reusedKeys)
    }

    /// After the fusion of a prepared prompt (its `kv` holding at least the missed chunks'
    /// blended rows): stores the chunks computed here for later requests, exact after a full
    /// prefill and approximate when they attended to reused KV; returns the report.
    public func complete(_ prepared: Preparation, model: LlamaModel, tokens: [Int32], result: FusionResult) -> ReuseReport {
        let layers = model.config.numHiddenLayers, kw = prepared.kv.width, kv = prepared.kv, spans = prepared.spans
        var report = prepared.report
        report.recomputedTokens = result.recomputedCachedRows.count + (tokens.count - report.reusedTokens)
        report.flops = result.flops
        let exact = prepared.recompute.everyRow
        let keys = prepared.keys.map(\.hex)
        for s in prepared.missed {
            let index = spans.firstIndex(of: s) ?? 0
            let data = kv.pack(rows: Array(s))
            let chunk = Array(tokens[s])
            var v = ChunkVariant(key: prepared.keys[index],
                                 context: ChunkStore.context(tokens[0..<s.lowerBound]), start: s.lowerBound, tokens: chunk,
                                 approximate: !exact, layers: layers, width: kw, data: data,
                                 savedFLOPs: Self.prefillFLOPs(model.config, start: s.lowerBound, count: s.count))
            v.priorChunks = Array(keys[0..<index])
            v.stats = index < result.statistics.count ? result.statistics[index] : nil
            store.insert(v)
        }
        return report
    }

    /// Cache-Craft's static choice: for each reused chunk, its CFO share of tokens with the
    /// most recorded attention on what preceded it (a chunk captured without statistics falls
    /// back to its first tokens, at CFO = alpha / 2).
    static func cacheCraftRows(found: [(span: Range<Int>, variant: ChunkVariant)], spans: [Range<Int>], keys: [String],
                               alpha: Double) -> [Int] {
        var rows: [Int] = []
        for (span, v) in found {
            let index = spans.firstIndex(of: span) ?? 0
            guard let stats = v.stats, stats.tokenPrefixMass.count == span.count else {
                rows += span.prefix(Int((alpha / 2 * Double(span.count)).rounded(.up)))
                continue
            }
            let cfo = ReusePolicy.cacheCraftFraction(stats: stats, old: v.priorChunks, new: Array(keys[0..<index]), alpha: alpha)
            let count = Int((cfo * Double(span.count) - 1e-9).rounded(.up))
            let ranked = stats.tokenPrefixMass.indices.sorted { stats.tokenPrefixMass[$0] > stats.tokenPrefixMass[$1] }
            rows += ranked.prefix(count).map { span.lowerBound + $0 }
        }
        return rows.sorted()
    }

    /// Whether this reuse prefill is audited: a draw at the audit share, for prefills that
    /// reused stored KV.
    public func drawsAudit(_ prepared: Preparation) -> Bool {
        prepared.report.hits > 0 && !prepared.recompute.everyRow && audit.share > 0
            && Double(auditDraws.next() % 1_000_000) < audit.share * 1_000_000
    }

    /// Audits a reuse prefill of the prompt `tokens` whose last row gave `logits`.
    public func audit(_ prepared: Preparation, model: LlamaModel, tokens: [Int32], logits: [Float]) throws -> AuditResult {
        try check(model: model, tokens: tokens, logits: logits, reusedKeys: prepared.reusedKeys)
    }

    /// Runs full prefill of the same prompt and compares its next-token distribution with the
    /// reuse prefill's; past the bound, the chunks reused here are disabled.
    private func check(model: LlamaModel, tokens: [Int32], logits: [Float], reusedKeys: [String]) throws -> AuditResult {
        let scratch = PromptKV(config: model.config, rows: tokens.count)
        let full = try model.fuse(tokens: tokens, cached: [Bool](repeating: false, count: tokens.count), kv: scratch, policy: .full)
        let kl = Self.klDivergence(full.logits, logits)
        let agrees = Self.argmax(full.logits) == Self.argmax(logits)
        var disabled = 0
        if kl > audit.maxKL {
            for k in reusedKeys where disabledKeys.insert(k).inserted { disabled += 1 }
            log(String(format: "chunk reuse audit: KL %.4f > %.4f (top-1 %@): %d chunk(s) computed in full from now on",
                       kl, audit.maxKL, agrees ? "agrees" : "differs", disabled))
        }
        return AuditResult(kl: kl, top1Agrees: agrees, disabledChunks: disabled)
    }

    public static func argmax(_ a: [Float]) -> Int { a.indices.max { a[$0] < a[$1] } ?? 0 }

    /// KL(p || q) of the softmax distributions of two logit rows, in nats.
    public static func klDivergence(_ p: [Float], _ q: [Float]) -> Double {
        func logSoftmax(_ x: [Float]) -> [Double] {
            let mx = Double(x.max() ?? 0)
            let lse = Foundation.log(x.reduce(0.0) { $0 + exp(Double($1) - mx) }) + mx
            return x.map { Double($0) - lse }
        }
        let lp = logSoftmax(p), lq = logSoftmax(q)
        return max(0, zip(lp, lq).reduce(0.0) { $0 + exp($1.0) * ($1.0 - $1.1) })
    }

    /// Approximate floating-point operations of prefilling `count` tokens after `start` others.
    static func prefillFLOPs(_ c: LlamaConfig, start: Int, count: Int) -> Double {
        let s = c.attentionShape, d = Double(c.hiddenSize), f = Double(c.intermediateSize)
        let perToken = 2 * (d * Double(s.queryWidth + 2 * s.keyValueWidth) + Double(s.queryWidth) * d + 3 * d * f)
        let attention = 4 * Double(s.queryWidth) * (Double(start) + Double(count) / 2)
        return Double(c.numHiddenLayers) * Double(count) * (perToken + attention)
    }
}
