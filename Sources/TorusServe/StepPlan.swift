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
    enum Kind: Int32 { case batch = 1, prefill = 2, stop = 3 }

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
        case .prefill:
            list(prefillTokens)
            w.append(Int32(prefillBlocks.count))
            for b in prefillBlocks { list(b) }
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
        case .prefill:
            guard let t = list(), let n = next() else { return nil }
            prefillTokens = t
            for _ in 0..<max(0, n) {
                guard let b = list() else { return nil }
                prefillBlocks.append(b)
            }
        }
        guard i == words.count else { return nil }
    }

    init(kind: Kind) { self.kind = kind }
}
