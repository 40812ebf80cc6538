import TorusModel

/// A run of one sequence's keys and values on one rank: global positions
/// `start..<start+count` in local rows `localRow..<localRow+count`.
struct KVSegment: Equatable {
    var start: Int
    var count: Int
    var localRow: Int
}

/// One sequence's keys and values on one rank: its blocks and which positions they hold.
struct RankKV: Equatable {
    var blocks: [Int32] = []
    var segments: [KVSegment] = []
    var rows: Int { segments.reduce(0) { $0 + $1.count } }

    /// Records positions `start..<start+count` appended at the end of the local rows.
    mutating func append(start: Int, count: Int) {
        let row = rows
        if var last = segments.last, last.start + last.count == start, last.localRow + last.count == row {
            last.count += count
            segments[segments.count - 1] = last
        } else {
            segments.append(KVSegment(start: start, count: count, localRow: row))
        }
    }
}

/// What every rank does in one step, sent by rank 0.
struct StepPlan: Equatable {
    enum Kind: Int32 { case batch = 1, prefill = 2, stop = 3, blend = 4 }

    /// The rows of one sequence in a batched step, with where its keys and values live.
    struct Chunk: Equatable {
        var rowOffset: Int
        var count: Int
        /// Position of the first row.
        var start: Int
        /// The rank that stores these rows' keys and values, at local row `appendRow`.
        var appender: Int
        var appendRow: Int
        /// Per rank: blocks and segments after this step (segments include the new rows).
        var kv: [RankKV]
    }

    var kind: Kind
    // .batch
    var tokens: [Int32] = []
    var positions: [Int32] = []
    var chunks: [Chunk] = []
    /// Rows whose logits rank 0 samples from.
    var logitRows: [Int32] = []
    // .prefill: a prompt prefix split across the ranks; each rank stores its rows in its blocks.
    var prefillTokens: [Int32] = []
    var prefillBlocks: [[Int32]] = []
    // .blend: also a prefill across the ranks, reusing stored chunk KV (rank 0 sends each rank
    // its cached rows and gets the rows of `returnedSpans` back, to store them as chunks).
    var cached: [Bool] = []
    var recompute = RecomputePolicy.full
    var returnedSpans: [Range<Int>] = []

    static let stop = StepPlan(kind: .stop)

    // MARK: - Words

    func encoded() -> [Int32] {
        var w: [Int32] = [kind.rawValue]
        func list(_ a: [Int32]) { w.append(Int32(a.count)); w += a }
        switch kind {
        case .stop: break
        case .batch:
            list(tokens)
            list(positions)
            list(logitRows)
            w.append(Int32(chunks.count))
            for c in chunks {
                w += [Int32(c.rowOffset), Int32(c.count), Int32(c.start), Int32(c.appender), Int32(c.appendRow), Int32(c.kv.count)]
                for r in c.kv {
                    list(r.blocks)
                    w.append(Int32(r.segments.count))
                    for s in r.segments { w += [Int32(s.start), Int32(s.count), Int32(s.localRow)] }
                }
            }
        case .prefill, .blend:
            list(prefillTokens)
            w.append(Int32(prefillBlocks.count))
            for b in prefillBlocks { list(b) }
            guard kind == .blend else { break }
            list(Self.runs(of: cached).flatMap { [Int32($0.lowerBound), Int32($0.count)] })
            list(returnedSpans.flatMap { [Int32($0.lowerBound), Int32($0.count)] })
            w += [recompute.everyRow ? 1 : 0, recompute.mask == .exact ? 0 : 1]
            list(recompute.forcedRows.map { Int32($0) })
            // A ratio travels as the two halves of its bits, so every rank selects the same rows.
            list(recompute.checks.flatMap { c -> [Int32] in
                let bits = c.ratio.bitPattern
                return [Int32(c.layer), Int32(bitPattern: UInt32(bits >> 32)), Int32(bitPattern: UInt32(bits & 0xFFFF_FFFF))]
            })
        }
        return w
    }

    /// Decodes `encoded()`; nil when the words are malformed.
    init?(words: [Int32]) {
        var i = 0
        func next() -> Int? {
            guard i < words.count else { return nil }
            defer { i += 1 }
            return Int(words[i])
        }
        func list() -> [Int32]? {
            guard let n = next(), n >= 0, i + n <= words.count else { return nil }
            defer { i += n }
            return Array(words[i..<(i + n)])
        }
        guard let k = next(), let kind = Kind(rawValue: Int32(k)) else { return nil }
        self.kind = kind
        switch kind {
        case .stop: break
        case .batch:
            guard let t = list(), let p = list(), let l = list(), let n = next() else { return nil }
            tokens = t; positions = p; logitRows = l
            for _ in 0..<max(0, n) {
                guard let ro = next(), let c = next(), let s = next(), let a = next(), let ar = next(), let ranks = next() else { return nil }
                var kv: [RankKV] = []
                for _ in 0..<max(0, ranks) {
                    guard let b = list(), let ns = next() else { return nil }
                    var segs: [KVSegment] = []
                    for _ in 0..<max(0, ns) {
                        guard let st = next(), let ct = next(), let lr = next() else { return nil }
                        segs.append(KVSegment(start: st, count: ct, localRow: lr))
                    }
                    kv.append(RankKV(blocks: b, segments: segs))
                }
                chunks.append(Chunk(rowOffset: ro, count: c, start: s, appender: a, appendRow: ar, kv: kv))
            }
        case .prefill, .blend:
            guard let t = list(), let n = next() else { return nil }
            prefillTokens = t
            for _ in 0..<max(0, n) {
                guard let b = list() else { return nil }
                prefillBlocks.append(b)
            }
            guard kind == .blend else { break }
            guard let runs = list(), runs.count % 2 == 0, let returned = list(), returned.count % 2 == 0,
                  let every = next(), let mask = next(), let forced = list(), let checks = list(), checks.count % 3 == 0 else { return nil }
            func ranges(_ w: [Int32]) -> [Range<Int>]? {
                var out: [Range<Int>] = []
                for i in stride(from: 0, to: w.count, by: 2) {
                    guard w[i] >= 0, w[i + 1] >= 0 else { return nil }
                    out.append(Int(w[i])..<(Int(w[i]) + Int(w[i + 1])))
                }
                return out
            }
            guard let cachedRuns = ranges(runs), let spans = ranges(returned),
                  cachedRuns.allSatisfy({ $0.upperBound <= t.count }) else { return nil }
            cached = [Bool](repeating: false, count: t.count)
            for r in cachedRuns { for j in r { cached[j] = true } }
            returnedSpans = spans
            recompute = RecomputePolicy(everyRow: every == 1, forcedRows: forced.map(Int.init),
                                        checks: stride(from: 0, to: checks.count, by: 3).map { i in
                                            let bits = UInt64(UInt32(bitPattern: checks[i + 1])) << 32 | UInt64(UInt32(bitPattern: checks[i + 2]))
                                            return RecomputePolicy.Check(layer: Int(checks[i]), ratio: Double(bitPattern: bits))
                                        }, mask: mask == 0 ? .exact : .bottomRight)
        }
        guard i == words.count else { return nil }
    }

    init(kind: Kind) { self.kind = kind }

    /// The runs of consecutive true flags.
    static func runs(of flags: [Bool]) -> [Range<Int>] {
        var out: [Range<Int>] = []
        var i = 0
        while i < flags.count {
            guard flags[i] else { i += 1; continue }
            var e = i + 1
            while e < flags.count && flags[e] { e += 1 }
            out.append(i..<e)
            i = e
        }
        return out
    }
}
