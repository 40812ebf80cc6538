import Foundation
import TorusTensor

/// Keys and values of every layer for one prompt, laid out densely: row p holds position p
/// (keys rotated at p). Chunk fusion starts from the cached rows placed here and overwrites
/// the rows it recomputes; the result is the prompt's decode cache.
public final class PromptKV: @unchecked Sendable {
    public let rows: Int
    public let width: Int
    /// Per layer [rows, Hkv*dh].
    public let keys: [Tensor]
    public let values: [Tensor]

    public init(config: LlamaConfig, rows: Int) {
        self.rows = rows
        width = config.attentionShape.keyValueWidth
        keys = (0..<config.numHiddenLayers).map { _ in Tensor(zeros: [max(rows, 1), config.attentionShape.keyValueWidth]) }
        values = (0..<config.numHiddenLayers).map { _ in Tensor(zeros: [max(rows, 1), config.attentionShape.keyValueWidth]) }
    }

    /// Rows `rows` of every layer, keys then values: [layer][K rows; V rows] (a stored chunk's
    /// layout when the rows are the chunk's).
    public func pack(rows: [Int]) -> [Float] {
        var out = [Float](repeating: 0, count: rows.count * 2 * width * keys.count)
        out.withUnsafeMutableBufferPointer { dst in
            var at = dst.baseAddress!
            for l in keys.indices {
                for t in [keys[l], values[l]] {
                    for r in rows {
                        at.update(from: t.pointer + r * width, count: width)
                        at += width
                    }
                }
            }
        }
        return out
    }

    /// The inverse of `pack`: `packed` into rows `rows` of every layer.
    public func unpack(_ packed: UnsafeBufferPointer<Float>, rows: [Int]) {
        precondition(packed.count >= rows.count * 2 * width * keys.count, "\(packed.count) values for \(rows.count) rows")
        guard var at = packed.baseAddress else { return }
        for l in keys.indices {
            for t in [keys[l], values[l]] {
                for r in rows {
                    (t.pointer + r * width).update(from: at, count: width)
                    at += width
                }
            }
        }
    }
}

/// Which prompt rows a chunk-reuse prefill recomputes at each layer. Rows without a cache (and
/// the last prompt row, whose logits are wanted) are always computed; cached rows keep their
/// stored keys and values unless chosen here.
public struct RecomputePolicy: Sendable, Equatable {
    /// How a recomputed row's attention is masked.
    public enum Mask: String, Sendable {
        /// Each row at position p sees the keys at positions <= p.
        case exact
        /// The selected rows are aligned to the end of the keys, as flash attention aligns a
        /// short query block (what CacheBlend's public code does): row i of s sees the keys up
        /// to n - s + i. Kept only to measure what the exact mask gains.
        case bottomRight = "bottom_right"
    }

    /// A layer where fresh values are compared with the cached ones (CacheBlend), keeping
    /// `ratio` of the cached rows, those that deviate most, for the later layers.
    public struct Check: Sendable, Equatable {
        public var layer: Int
        public var ratio: Double
        public init(layer: Int, ratio: Double) {
            self.layer = layer
            self.ratio = ratio
        }
    }

    /// Recompute everything (full prefill).
    public var everyRow = false
    /// Cached rows recomputed at every layer (EPIC's first tokens of each chunk, Cache-Craft's
    /// static choice, a test's set).
    public var forcedRows: [Int] = []
    /// Check layers in increasing order (every row is computed up to the first; each keeps a
    /// share of the cached rows). Empty: the choice is static.
    public var checks: [Check] = []
    public var mask: Mask = .exact

    public init(everyRow: Bool = false, forcedRows: [Int] = [], checks: [Check] = [], mask: Mask = .exact) {
        self.everyRow = everyRow
        self.forcedRows = forcedRows
        self.checks = checks
        self.mask = mask
    }

    /// Full prefill.
    public static let full = RecomputePolicy(everyRow: true)
    /// Cached rows reused unchanged; only uncached rows computed.
    public static let unchanged = RecomputePolicy()
    /// CacheBlend: every row through `checkLayer`, then the top `ratio` of cached rows by
    /// value deviation there.
    public static func cacheBlend(ratio: Double, checkLayer: Int = 1, mask: Mask = .exact) -> RecomputePolicy {
        RecomputePolicy(checks: [Check(layer: checkLayer, ratio: ratio)], mask: mask)
    }
}

/// How one chunk's tokens attended in a full prefill (Cache-Craft's statistics), averaged over
/// layers and heads.
public struct ChunkAttentionStats: Sendable, Equatable, Codable {
    /// Per token: attention mass on every position before the chunk.
    public var tokenPrefixMass: [Float]
    /// Per earlier chunk of the prompt (in order): the tokens' mean attention mass on it.
    public var priorMass: [Float]
    /// The tokens' mean attention mass on the chunk itself.
    public var selfMass: Float

    public init(tokenPrefixMass: [Float], priorMass: [Float], selfMass: Float) {
        self.tokenPrefixMass = tokenPrefixMass
        self.priorMass = priorMass
        self.selfMass = selfMass
    }

    /// Cache-Craft's context dependence: sigmoid(mean inter-chunk mass / intra-chunk mass).
    public var cci: Double {
        let inter = Double(tokenPrefixMass.reduce(0, +)) / Double(max(tokenPrefixMass.count, 1))
        let ratio = inter / Double(max(selfMass, 1e-6))
        return 1 / (1 + exp(-ratio))
    }
}

/// What a chunk-reuse prefill computed.
public struct FusionResult: Sendable {
    /// Logits of the last prompt row.
    public var logits: [Float]
    /// Per layer: rows whose Q, K, V were computed.
    public var projectedRows: [Int]
    /// Per layer: rows whose attention and MLP were computed.
    public var computedRows: [Int]
    /// Cached rows recomputed after the last check (or by the static choice), ascending.
    public var recomputedCachedRows: [Int]
    /// Floating-point operations spent (matrix products and attention, check layers included).
    public var flops: Double
    /// Per span asked for (full prefill only): how its tokens attended.
    public var statistics: [ChunkAttentionStats] = []
}

extension LlamaModel {
    /// Relocates `rows` rows of keys (rotated at their positions) by `delta` positions: exact
    /// for rotary embeddings, R(p + delta) = R(delta) R(p).
    public func relocateKeys(_ keys: UnsafeMutablePointer<Float>, rows: Int, by delta: Int) {
        guard delta != 0, rows > 0 else { return }
        rotary.shift(keys, rows: rows, heads: shape.keyValueHeads, by: delta)
    }

    /// Prefill of `tokens` (positions 0..<n) reusing the cached keys and values that `kv` holds
    /// for rows where `cached` is true: every uncached row is computed, cached rows only as
    /// `policy` chooses (CacheBlend's check layers, a static set, or all). `kv` ends holding the
    /// blended keys and values of every layer. Uses the same layer halves as every other
    /// forward pass and `BlockAttention` for each computed row against all keys, masked per row.
    ///
    /// With `statistics` spans (chunks, ascending) and a full prefill, also records how each
    /// span's tokens attend to what precedes it and to each earlier span (Cache-Craft).
    public func fuse(tokens: [Int32], cached: [Bool], kv: PromptKV, policy: RecomputePolicy,
                     statistics spans: [Range<Int>] = []) throws -> FusionResult {
        let n = tokens.count
        guard kv.rows >= n else { throw ModelInputError.shapeMismatch("fusion of \(n) tokens with \(kv.rows) KV rows") }
        let recorder = policy.everyRow && !spans.isEmpty ? AttentionStatsRecorder(spans: spans, shape: shape) : nil
        return try fuse(tokens: tokens, cached: cached, kv: kv, policy: policy,
                        group: LocalFusionGroup(length: n, shape: shape, mask: policy.mask), recorder: recorder)
    }

    /// The same prefill with the prompt's rows split over the ranks of `group` (a
    /// sequence-parallel group): every rank passes the whole prompt, its cache flags and
    /// policy, and `kv` holding its own rows (`group.localPositions`, cached rows filled). The
    /// choice at a check layer is global (every rank's deviations compared), and computed
    /// rows attend to every rank's keys through `group`. `kv` ends holding this rank's blended
    /// rows; the logits of the last prompt row come back on every rank.
    public func fuse(tokens: [Int32], cached: [Bool], kv: PromptKV, policy: RecomputePolicy, group: FusionGroup) throws -> FusionResult {
        guard policy.mask == .exact || group.size == 1 else {
            throw ModelInputError.shapeMismatch("the bottom-right mask is measured on one rank only, not across \(group.size) ranks")
        }
        return try fuse(tokens: tokens, cached: cached, kv: kv, policy: policy, group: group, recorder: nil)
    }

    private func fuse(tokens: [Int32], cached: [Bool], kv: PromptKV, policy: RecomputePolicy, group: FusionGroup,
                      recorder: AttentionStatsRecorder?) throws -> FusionResult {
        try requireWhole(for: "chunk fusion")
        let n = tokens.count, d = config.hiddenSize, local = group.localPositions
        guard n > 0, cached.count == n, kv.rows >= local.count, local.allSatisfy({ $0 >= 0 && $0 < n }) else {
            throw ModelInputError.shapeMismatch("fusion of \(n) tokens with \(cached.count) cache flags, \(local.count) local rows "
                + "and \(kv.rows) KV rows")
        }
        try checkTokens(tokens)
        guard n <= rotary.capacity else { throw ModelInputError.sequenceTooLong(length: n, limit: rotary.capacity) }
        let layers = config.numHiddenLayers
        for c in policy.checks where c.layer < 0 || c.layer >= layers || !(0...1).contains(c.ratio) {
            throw ModelInputError.shapeMismatch("check layer \(c.layer) with ratio \(c.ratio) (layers 0..<\(layers), ratio 0...1)")
        }
        for r in policy.forcedRows where r < 0 || r >= n {
            throw ModelInputError.shapeMismatch("forced row \(r) outside the prompt's \(n) rows")
        }
        // Positions computed at every layer: uncached, forced, and the last (its logits).
        var always = [Bool](repeating: false, count: n)
        for j in 0..<n where !cached[j] { always[j] = true }
        for j in policy.forcedRows { always[j] = true }
        always[n - 1] = true
        let cachedCount = cached.lazy.filter { $0 }.count
        // Positions computed at the current layer (every rank knows every rank's), and this
        // rank's computed rows (local row indices, ascending).
        var computed = policy.everyRow || !policy.checks.isEmpty ? [Bool](repeating: true, count: n) : always
        var rows = local.indices.filter { computed[local[$0]] }

        let shape = self.shape, qw = shape.queryWidth, kw = shape.keyValueWidth
        // Rows only drop out after a check layer, so the first layer's rows bound every layer's
        // (without a check layer only the uncached, forced and last rows are computed).
        let buffers = LayerBuffers(rows: max(rows.count, 1), config: config)
        let hidden = Tensor(zeros: [max(rows.count, 1), d])
        var x = embed(rows.map { tokens[local[$0]] }, into: hidden.view(offset: 0, shape: [rows.count, d]))
        var positions = rows.map { Int32(local[$0]) }
        var projected: [Int] = [], computedCounts: [Int] = []
        var flops = 0.0
        let f = Double(config.intermediateSize), dd = Double(d)

        for (l, w) in weights.layers.enumerated() {
            var m = rows.count
            var b = buffers.prefix(m)
            positions.withUnsafeBufferPointer { layerProjections(w, x: x, rows: m, positions: $0.baseAddress!, into: b) }
            let total = computed.lazy.filter { $0 }.count
            projected.append(total)
            flops += 2 * dd * Double(qw + 2 * kw) * Double(total)
            var keep: [Int]? = nil
            if let check = policy.checks.first(where: { $0.layer == l }), !policy.everyRow {
                // Deviation of each cached row's fresh values from its cached ones (-1: not a
                // candidate), compared across every rank's rows.
                var deviation = [Float](repeating: -1, count: local.count)
                for (i, r) in rows.enumerated() where cached[local[r]] && !always[local[r]] {
                    let fresh = b.v.pointer + i * kw, old = kv.values[l].pointer + r * kw
                    var s: Float = 0
                    for c in 0..<kw { let e = fresh[c] - old[c]; s += e * e }
                    deviation[r] = s
                }
                var scored: [(dev: Float, position: Int)] = []
                for (rank, values) in try group.allGather(deviation).enumerated() {
                    for (i, p) in group.positions(rank: rank).enumerated() where values[i] >= 0 { scored.append((values[i], p)) }
                }
                let quota = Int((check.ratio * Double(cachedCount) - 1e-9).rounded(.up))
                scored.sort { $0.dev != $1.dev ? $0.dev > $1.dev : $0.position < $1.position }
                computed = always
                for s in scored.prefix(max(0, quota)) { computed[s.position] = true }
                keep = rows.indices.filter { computed[local[rows[$0]]] }
            }
            // Every projected row's keys and values go into the prompt's cache.
            for (i, r) in rows.enumerated() {
                (kv.keys[l].pointer + r * kw).update(from: b.k.pointer + i * kw, count: kw)
                (kv.values[l].pointer + r * kw).update(from: b.v.pointer + i * kw, count: kw)
            }
            if let keep, keep.count < m {
                // Later layers compute only the kept rows: move them to the front.
                for (to, from) in keep.enumerated() where to != from {
                    (b.q.pointer + to * qw).update(from: b.q.pointer + from * qw, count: qw)
                    (x.pointer + to * d).update(from: x.pointer + from * d, count: d)
                }
                rows = keep.map { rows[$0] }
                positions = rows.map { Int32(local[$0]) }
                m = rows.count
                b = buffers.prefix(m)
                x = x.view(offset: 0, shape: [m, d])
            }
            try group.attend(layer: l, computed: computed, rows: rows, q: b.q, kv: kv, out: b.o, lse: b.lse)
            // Every row is computed in a full prefill: row index = position.
            recorder?.record(layer: l, q: b.q, lse: b.lse, kv: kv)
            let counted = computed.lazy.filter { $0 }.count
            for (i, p) in (0..<n).lazy.filter({ computed[$0] }).enumerated() {
                let seen = policy.mask == .exact ? p + 1 : n - counted + i + 1
                flops += 4 * Double(qw) * Double(seen)
            }
            layerOutput(w, x: x, rows: m, into: b)
            flops += 2 * Double(counted) * (Double(qw) * dd + 3 * dd * f)
            computedCounts.append(counted)
            x = b.out
        }
        // The rank holding the last prompt position (always computed: the last of its rows)
        // runs the head on it and shares the logits.
        var mine = [Float](repeating: 0, count: config.vocabSize + 1)
        if let last = rows.last, local[last] == n - 1 {
            mine[0] = 1
            mine.replaceSubrange(1..., with: headLogits(x.view(offset: (rows.count - 1) * d, shape: [1, d]), rows: 1).logits.array)
        }
        let logits: [Float]
        if group.size == 1 {
            logits = Array(mine.dropFirst())
        } else {
            guard let owner = try group.allGather(mine).first(where: { $0[0] == 1 }) else {
                throw ModelInputError.shapeMismatch("no rank holds the last prompt position \(n - 1)")
            }
            logits = Array(owner.dropFirst())
        }
        flops += 2 * dd * Double(config.vocabSize)
        return FusionResult(logits: logits, projectedRows: projected, computedRows: computedCounts,
                            recomputedCachedRows: (0..<n).filter { computed[$0] && cached[$0] }, flops: flops,
                            statistics: recorder?.result(layers: layers) ?? [])
    }
}

/// The ranks a chunk-reuse prefill runs on and what their rows need from each other: one
/// process holding every row (`LocalFusionGroup`), or one rank of a sequence-parallel group.
public protocol FusionGroup: ShardGroup {
    /// Global positions of this rank's rows, ascending (its rows of the prompt's `PromptKV`).
    var localPositions: [Int] { get }
    /// Global positions of `rank`'s rows (every rank holds as many).
    func positions(rank: Int) -> [Int]
    /// Attention of this rank's computed rows (`rows`: local row indices, ascending; `q`
    /// holds their queries) against every rank's keys and values of `layer`, into `out`,
    /// `lse`; `computed` flags every rank's computed positions.
    func attend(layer: Int, computed: [Bool], rows: [Int], q: Tensor, kv: PromptKV, out: Tensor, lse: Tensor) throws
}

/// Every row of a prompt in this process.
final class LocalFusionGroup: FusionGroup {
    let length: Int
    let shape: AttentionShape
    let mask: RecomputePolicy.Mask
    private let partOut: Tensor, partLSE: Tensor

    init(length: Int, shape: AttentionShape, mask: RecomputePolicy.Mask) {
        self.length = length
        self.shape = shape
        self.mask = mask
        partOut = Tensor(zeros: [max(length, 1), shape.queryWidth])
        partLSE = Tensor(zeros: [max(length, 1), shape.queryHeads])
    }

    var rank: Int { 0 }
    var size: Int { 1 }
    var localPositions: [Int] { Array(0..<length) }
    func positions(rank: Int) -> [Int] { localPositions }
    func allGather(_ values: [Float]) throws -> [[Float]] { [values] }

    /// Each computed row against the first `length` keys, in runs of rows whose mask
    /// positions follow each other.
    func attend(layer: Int, computed: [Bool], rows: [Int], q: Tensor, kv: PromptKV, out: Tensor, lse: Tensor) throws {
        let qw = shape.queryWidth, hq = shape.queryHeads, m = rows.count, n = length
        let keys = [BlockAttention.KeyRun(k: kv.keys[layer].pointer, v: kv.values[layer].pointer, start: 0, count: n)]
        func maskPosition(_ i: Int) -> Int { mask == .exact ? rows[i] : n - m + i }
        var i = 0
        while i < m {
            var e = i + 1
            while e < m && maskPosition(e) == maskPosition(e - 1) + 1 { e += 1 }
            BlockAttention.forward(q: q.pointer + i * qw, queryCount: e - i, queryStart: maskPosition(i), runs: keys, shape: shape,
                                   out: out.pointer + i * qw, lse: lse.pointer + i * hq, partOut: partOut.pointer, partLSE: partLSE.pointer)
            i = e
        }
    }
}

extension LlamaModel {
    /// The keys and values of a prompt made of `chunks`, each computed alone from position 0
    /// (a full prefill of the chunk) and moved to its place in the prompt: what a store holds
    /// for chunks met in other prompts. Rows past the chunks stay zero.
    public func chunksComputedAlone(_ chunks: [[Int32]], rows: Int) throws -> PromptKV {
        let kv = PromptKV(config: config, rows: rows), kw = kv.width
        guard chunks.reduce(0, { $0 + $1.count }) <= rows else {
            throw ModelInputError.shapeMismatch("chunks of \(chunks.reduce(0) { $0 + $1.count }) tokens in a cache of \(rows) rows")
        }
        var at = 0
        for c in chunks where !c.isEmpty {
            let alone = PromptKV(config: config, rows: c.count)
            _ = try fuse(tokens: c, cached: [Bool](repeating: false, count: c.count), kv: alone, policy: .full)
            for l in 0..<config.numHiddenLayers {
                (kv.keys[l].pointer + at * kw).update(from: alone.keys[l].pointer, count: c.count * kw)
                (kv.values[l].pointer + at * kw).update(from: alone.values[l].pointer, count: c.count * kw)
                relocateKeys(kv.keys[l].pointer + at * kw, rows: c.count, by: at)
            }
            at += c.count
        }
        return kv
    }
}

extension LlamaModel {
    /// Runs `tokens` at positions `length...` on top of a prompt's keys and values (rows
    /// `0..<length` of `kv`), storing theirs in the rows that follow; returns their logits
    /// [tokens.count, vocab]. Greedy decoding after a fusion, and teacher-forced continuations
    /// to compare against full prefill, use it.
    public func extend(kv: PromptKV, length: Int, tokens: [Int32]) throws -> Tensor {
        let m = tokens.count, kw = shape.keyValueWidth
        guard m > 0, length + m <= kv.rows else {
            throw ModelInputError.shapeMismatch("extending \(length) rows by \(m) in a cache of \(kv.rows)")
        }
        let workspace = StepWorkspace(config: config, rowCapacity: m, logitCapacity: m)
        let partOut = Tensor(zeros: [m, shape.queryWidth]), partLSE = Tensor(zeros: [m, shape.queryHeads])
        let logits = try step(tokens: tokens, positions: (length..<(length + m)).map { Int32($0) }, logitRows: Array(0..<m),
                              workspace: workspace) { l, q, k, v, o, lse in
            (kv.keys[l].pointer + length * kw).update(from: k.pointer, count: m * kw)
            (kv.values[l].pointer + length * kw).update(from: v.pointer, count: m * kw)
            let run = BlockAttention.KeyRun(k: kv.keys[l].pointer, v: kv.values[l].pointer, start: 0, count: length + m)
            BlockAttention.forward(q: q.pointer, queryCount: m, queryStart: length, runs: [run], shape: self.shape, out: o.pointer,
                                   lse: lse.pointer, partOut: partOut.pointer, partLSE: partLSE.pointer)
        }
        let copy = Tensor(zeros: [m, config.vocabSize])
        copy.pointer.update(from: logits.pointer, count: m * config.vocabSize)
        return copy
    }
}

/// Accumulates, layer by layer of a full prefill, the attention mass of each span's tokens on
/// what precedes the span, on each earlier span and on the span itself: the mass on a key set
/// is exp(lse over that set - lse over all visible keys), per head.
final class AttentionStatsRecorder {
    let spans: [Range<Int>]
    let shape: AttentionShape
    private var prefix: [[Float]]       // per span, per token: summed mass (over layers and heads)
    private var prior: [[Float]]        // per span, per earlier span: summed mean mass
    private var own: [Float]
    private let out: Tensor, lse: Tensor, partOut: Tensor, partLSE: Tensor

    init(spans: [Range<Int>], shape: AttentionShape) {
        self.spans = spans
        self.shape = shape
        prefix = spans.map { [Float](repeating: 0, count: $0.count) }
        prior = spans.indices.map { [Float](repeating: 0, count: $0) }
        own = [Float](repeating: 0, count: spans.count)
        let longest = spans.map(\.count).max() ?? 1
        out = Tensor(zeros: [longest, shape.queryWidth])
        lse = Tensor(zeros: [longest, shape.queryHeads])
        partOut = Tensor(zeros: [longest, shape.queryWidth])
        partLSE = Tensor(zeros: [longest, shape.queryHeads])
    }

    /// Mass per token (summed over heads) of span `c`'s queries on keys `keys`.
    private func mass(_ c: Range<Int>, keys: Range<Int>, q: Tensor, total: Tensor, kv: PromptKV, layer: Int) -> [Float] {
        let qw = shape.queryWidth, kw = shape.keyValueWidth, hq = shape.queryHeads
        let run = BlockAttention.KeyRun(k: kv.keys[layer].pointer + keys.lowerBound * kw, v: kv.values[layer].pointer + keys.lowerBound * kw,
                                        start: keys.lowerBound, count: keys.count)
        BlockAttention.forward(q: q.pointer + c.lowerBound * qw, queryCount: c.count, queryStart: c.lowerBound, runs: [run], shape: shape,
                               out: out.pointer, lse: lse.pointer, partOut: partOut.pointer, partLSE: partLSE.pointer)
        return (0..<c.count).map { i in
            var m: Float = 0
            for h in 0..<hq { m += exp(lse.pointer[i * hq + h] - total.pointer[(c.lowerBound + i) * hq + h]) }
            return m
        }
    }

    func record(layer: Int, q: Tensor, lse total: Tensor, kv: PromptKV) {
        for (ci, c) in spans.enumerated() where !c.isEmpty {
            if c.lowerBound > 0 {
                let m = mass(c, keys: 0..<c.lowerBound, q: q, total: total, kv: kv, layer: layer)
                for i in m.indices { prefix[ci][i] += m[i] }
            }
            for (pi, p) in spans.prefix(ci).enumerated() where !p.isEmpty {
                prior[ci][pi] += mass(c, keys: p, q: q, total: total, kv: kv, layer: layer).reduce(0, +) / Float(c.count)
            }
            own[ci] += mass(c, keys: c, q: q, total: total, kv: kv, layer: layer).reduce(0, +) / Float(c.count)
        }
    }

    func result(layers: Int) -> [ChunkAttentionStats] {
        let scale = 1 / Float(layers * shape.queryHeads)
        return spans.indices.map { ci in
            ChunkAttentionStats(tokenPrefixMass: prefix[ci].map { $0 * scale }, priorMass: prior[ci].map { $0 * scale },
                                selfMass: own[ci] * scale)
        }
    }
}
