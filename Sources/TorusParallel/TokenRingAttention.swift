import Foundation
import TorusComm
import TorusTensor

/// TokenRing: keys and values stay home; queries travel around the ring (to the previous rank)
/// while the partial results of earlier steps travel straight back to the queries' owner, so
/// both directions of the links carry data at once. At step s rank r holds the queries of rank
/// r + s, attends them to its own keys, and returns (out, lse) to their owner, which merges the
/// partials in step order. With causal zigzag chunks a rank's early chunk sees no key of the
/// ranks after it, so once the queries wrap past rank 0 only their late half travels on.
///
/// Backward (not in the public TokenRing code) mirrors it: the query-side tensors (Q, dO, lse
/// and D = rowsum(dO * O)) travel forward; each rank adds their contribution to its own dK, dV,
/// which never move, and sends the dQ partial straight back to the owner, which sums them in
/// step order. Both passes are exact: every (query block, key block) pair is computed once
/// with the final lse and D.
public final class TokenRingAttention: SequenceParallelGroup, SequenceParallelAttention {

    /// Whether the queries of `queryOwner` see any key of `keyOwner` (known on both sides, so
    /// fully masked pairs send nothing).
    func hasWork(queryOwner: Int, keyOwner: Int, queries: [SequenceSegment]? = nil) -> Bool {
        blocks.anyVisible(queries ?? layout.segments(rank: queryOwner), layout.segments(rank: keyOwner))
    }

    /// Whether `holder` needs the early (first) half of `owner`'s queries: not when the layout is
    /// causal zigzag and every key chunk of `holder` lies after the owner's early chunk.
    func needsEarlyHalf(owner: Int, holder: Int) -> Bool {
        guard causal && layout.kind == .zigzag else { return true }
        let early = layout.segments(rank: owner)[0]
        return layout.segments(rank: holder).contains { blocks.visible(early, $0) }
    }

    /// This rank's query segments cut in two for its own block: the first part runs at step 0
    /// (while the first queries arrive), the last part after the remote steps, while the last
    /// partial results travel back and the peers finish theirs, so a rank does not sit blocked
    /// on the final partial (the zigzag's early segment, or the first half of a contiguous one).
    func localParts(_ mine: [SequenceSegment]) -> (first: [SequenceSegment], last: [SequenceSegment]) {
        if mine.count >= 2 { return ([mine[0]], Array(mine.dropFirst())) }
        guard let only = mine.first, only.count >= 2 else { return (mine, []) }
        let half = only.count / 2
        return ([SequenceSegment(start: only.start, count: half, localRow: only.localRow)],
                [SequenceSegment(start: only.start + half, count: only.count - half, localRow: only.localRow + half)])
    }

    /// The most messages one step of a query stream is split into.
    static let partsPerStep = 4

    /// The tag of part `part` of step `step` of a query stream (`kind`).
    static func tag(_ kind: MessageKind, step: Int, part: Int) -> Int {
        precondition(part < partsPerStep, "TokenRing sends at most \(partsPerStep) parts a step")
        return MessageTag.of(kind, step * partsPerStep + part)
    }

    /// Sends `ranges` (offset, count) of `t` to `dest` as separate messages, parts 0, 1, ... of
    /// step `step` of `kind`.
    func sendRanges(_ t: Tensor, _ ranges: [(Int, Int)], to dest: Int, kind: MessageKind, step: Int) throws -> [Request] {
        try ranges.enumerated().map { i, r in try isend(t, offset: r.0, count: r.1, to: dest, tag: Self.tag(kind, step: step, part: i)) }
    }

    func receiveRanges(_ t: Tensor, _ ranges: [(Int, Int)], from source: Int, kind: MessageKind, step: Int) throws -> [Request] {
        try ranges.enumerated().map { i, r in
            try comm.irecv(t.pointer + r.0, count: r.1, from: source, tag: Self.tag(kind, step: step, part: i), keepAlive: t)
        }
    }

    public func forward(q: Tensor, k: Tensor, v: Tensor) throws -> (out: Tensor, lse: Tensor) {
        try checkRows(q, width: shape.queryWidth, "q")
        return try forward(queries: QueryRows(wholeLayout: layout), q: q, k: k, v: v)
    }

    /// Attention of this rank's rows of `queries` (`q` holds them compactly) against every
    /// rank's keys and values (`k`, `v`: all of this rank's rows of the layout). The queries
    /// travel as they are: each rank's count, not the layout's, sizes its messages.
    public func forward(queries: QueryRows, q: Tensor, k: Tensor, v: Tensor) throws -> (out: Tensor, lse: Tensor) {
        let qw = shape.queryWidth, hq = shape.queryHeads, p = comm.size
        try checkQueries(queries, q)
        try checkRows(k, width: shape.keyValueWidth, "k")
        try checkRows(v, width: shape.keyValueWidth, "v")
        let mySegments = layout.segments(rank: comm.rank), myQueries = queries.segments[comm.rank]
        let counts = (0..<p).map { queries.count(rank: $0) }
        let n = counts[comm.rank], most = max(counts.max() ?? 0, 1)
        let partOut = Tensor(zeros: [most, qw]), partLSE = Tensor(zeros: [most, hq])
        // A partial result for the queries of a rank with m rows is [out (m x qw); lse (m x hq)].
        let out = Tensor(zeros: [n, qw]), lse = Tensor(zeros: [n, hq])
        lse.fill(-.infinity)
        var heldQ = Tensor(zeros: [most, qw]), incomingQ = Tensor(zeros: [most, qw])
        heldQ.pointer.update(from: q.pointer, count: n * qw)
        let partials = try ReturnedPartials(group: self, size: most * (qw + hq), kind: .tokenRingPartials) { source in
            self.hasWork(queryOwner: self.comm.rank, keyOwner: source, queries: myQueries)
        }
        func mergeReceived(_ s: Int) throws {
            try partials.consume(step: s) { buffer in
                AttentionMerge.merge(out: out.pointer, lse: lse.pointer, otherOut: buffer.pointer, otherLSE: buffer.pointer + n * qw,
                                     rows: n, heads: hq, headDim: shape.headDim)
            }
        }
        // The late half of a rank's queries (zigzag: its late chunk), when they are the layout's rows.
        func ranges(owner: Int, full: Bool) -> [(Int, Int)] {
            let m = counts[owner] * qw
            return full || !queries.isWholeLayout ? [(0, m)] : [(counts[owner] / 2 * qw, m - counts[owner] / 2 * qw)]
        }
        let local = localParts(myQueries)
        for s in 0..<p {
            let owner = rank(s)
            var qRequests: [Request] = []
            if s < p - 1 {
                // The queries of `owner` go to the previous rank; it gets the next rank's (rank(s + 1)).
                let sendFull = needsEarlyHalf(owner: owner, holder: prev)
                let recvFull = needsEarlyHalf(owner: rank(s + 1), holder: comm.rank)
                qRequests += try receiveRanges(incomingQ, ranges(owner: rank(s + 1), full: recvFull), from: next, kind: .tokenRingQueries, step: s)
                qRequests += try sendRanges(heldQ, ranges(owner: owner, full: sendFull), to: prev, kind: .tokenRingQueries, step: s)
            }
            if s == 0 {
                blocks.forward(querySegments: local.first, keySegments: mySegments, q: q.pointer, k: k.pointer, v: v.pointer,
                               out: out.pointer, lse: lse.pointer, partOut: partOut, partLSE: partLSE, poll: qRequests)
            } else if hasWork(queryOwner: owner, keyOwner: comm.rank, queries: queries.segments[owner]) {
                // lse -inf marks rows not yet attended: the merge copies into them, and the owner's
                // merge skips rows that stay -inf, so the output part needs no clearing.
                let m = counts[owner]
                let buffer = try partials.outgoing(step: s)
                (buffer.pointer + m * qw).update(repeating: -.infinity, count: m * hq)
                blocks.forward(querySegments: queries.segments[owner], keySegments: mySegments, q: heldQ.pointer,
                               k: k.pointer, v: v.pointer, out: buffer.pointer, lse: buffer.pointer + m * qw,
                               partOut: partOut, partLSE: partLSE, poll: qRequests + partials.pending)
                try partials.send(step: s, to: owner, count: m * (qw + hq))
            }
            // The partial of the previous step had this step's compute to arrive: merge it (in
            // step order), then reuse its buffer for step s + 1.
            if s >= 2 {
                try mergeReceived(s - 1)
                try partials.post(step: s + 1)
            }
            try waitAll(qRequests)
            swap(&heldQ, &incomingQ)
        }
        // The rest of this rank's own block (merged after the partials already in: the merge
        // is order-free) while the last partials travel.
        blocks.forward(querySegments: local.last, keySegments: mySegments, q: q.pointer, k: k.pointer, v: v.pointer,
                       out: out.pointer, lse: lse.pointer, partOut: partOut, partLSE: partLSE, poll: partials.inFlight)
        if p >= 2 { try mergeReceived(p - 1) }
        try partials.finish()
        return (out, lse)
    }

    public func backward(q: Tensor, k: Tensor, v: Tensor, out: Tensor, lse: Tensor, dOut: Tensor) throws -> (dq: Tensor, dk: Tensor, dv: Tensor) {
        let n = layout.localCount, qw = shape.queryWidth, hq = shape.queryHeads, kw = shape.keyValueWidth, p = comm.size
        try checkRows(dOut, width: qw, "dOut")
        let mySegments = layout.segments(rank: comm.rank)
        // The travelling query side: [Q; dO; lse; D].
        let packSize = 2 * n * qw + 2 * n * hq
        let rowDot = Tensor(zeros: [n, hq])
        BlockAttention.rowDot(dOut: dOut.pointer, out: out.pointer, rows: n, shape: shape, result: rowDot.pointer)
        var held = Tensor.concatenating([q, dOut, lse, rowDot]), incoming = Tensor(zeros: [packSize])
        let dq = Tensor(zeros: [n, qw]), dk = Tensor(zeros: [n, kw]), dv = Tensor(zeros: [n, kw])
        let partials = try ReturnedPartials(group: self, size: n * qw, kind: .tokenRingBackwardPartials) { source in
            self.hasWork(queryOwner: self.comm.rank, keyOwner: source)
        }
        // The late halves of Q, dO, lse and D inside the pack.
        let c = n / 2
        let lateRanges = [(c * qw, (n - c) * qw), (n * qw + c * qw, (n - c) * qw),
                          (2 * n * qw + c * hq, (n - c) * hq), (2 * n * qw + n * hq + c * hq, (n - c) * hq)]
        func addReceived(_ s: Int) throws {
            try partials.consume(step: s) { VectorMath.add($0.pointer, into: dq.pointer, count: n * qw) }
        }
        let local = localParts(mySegments)
        for s in 0..<p {
            let owner = rank(s)
            var packRequests: [Request] = []
            if s < p - 1 {
                let sendFull = needsEarlyHalf(owner: owner, holder: prev)
                let recvFull = needsEarlyHalf(owner: rank(s + 1), holder: comm.rank)
                packRequests += try receiveRanges(incoming, recvFull ? [(0, packSize)] : lateRanges, from: next, kind: .tokenRingBackwardPacks, step: s)
                packRequests += try sendRanges(held, sendFull ? [(0, packSize)] : lateRanges, to: prev, kind: .tokenRingBackwardPacks, step: s)
            }
            let hp = held.pointer
            if s == 0 {
                blocks.backward(querySegments: local.first, keySegments: mySegments, q: hp, k: k.pointer, v: v.pointer,
                                dOut: hp + n * qw, lse: hp + 2 * n * qw, rowDot: hp + 2 * n * qw + n * hq,
                                dq: dq.pointer, dk: dk.pointer, dv: dv.pointer, poll: packRequests)
            } else if hasWork(queryOwner: owner, keyOwner: comm.rank) {
                let buffer = try partials.outgoing(step: s)
                buffer.fill(0)
                blocks.backward(querySegments: layout.segments(rank: owner), keySegments: mySegments, q: hp, k: k.pointer, v: v.pointer,
                                dOut: hp + n * qw, lse: hp + 2 * n * qw, rowDot: hp + 2 * n * qw + n * hq,
                                dq: buffer.pointer, dk: dk.pointer, dv: dv.pointer, poll: packRequests + partials.pending)
                try partials.send(step: s, to: owner)
            }
            if s >= 2 {
                try addReceived(s - 1)
                try partials.post(step: s + 1)
            }
            try waitAll(packRequests)
            swap(&held, &incoming)
        }
        // The rest of this rank's own block while the last dq partials travel.
        blocks.backward(querySegments: local.last, keySegments: mySegments, q: q.pointer, k: k.pointer, v: v.pointer,
                        dOut: dOut.pointer, lse: lse.pointer, rowDot: rowDot.pointer,
                        dq: dq.pointer, dk: dk.pointer, dv: dv.pointer, poll: partials.inFlight)
        if p >= 2 { try addReceived(p - 1) }
        try partials.finish()
        return (dq, dk, dv)
    }
}

/// Partial results returned straight to their owner: each step's outgoing partial goes from a
/// double buffer to the owner, and this rank's incoming partials (step s comes from rank - s)
/// are received double-buffered and consumed in step order. Steps whose block pair is fully
/// masked exchange nothing (both sides know it).
final class ReturnedPartials {
    let group: TokenRingAttention
    let kind: MessageKind
    /// Whether the rank `source` has a partial for this rank's queries.
    let expects: (_ source: Int) -> Bool
    private let sendBuffers: [Tensor], receiveBuffers: [Tensor]
    private var sends: [Request?] = [nil, nil], receives: [Request?] = [nil, nil]

    /// Posts the receives of steps 1 and 2.
    init(group: TokenRingAttention, size: Int, kind: MessageKind, expects: @escaping (_ source: Int) -> Bool) throws {
        self.group = group
        self.kind = kind
        self.expects = expects
        sendBuffers = [Tensor(zeros: [size]), Tensor(zeros: [size])]
        receiveBuffers = [Tensor(zeros: [size]), Tensor(zeros: [size])]
        try post(step: 1)
        try post(step: 2)
    }

    /// Receives still in flight (to poll while computing).
    var pending: [Request] { receives.compactMap { $0 } }
    /// Sends and receives still in flight.
    var inFlight: [Request] { (receives + sends).compactMap { $0 } }

    /// Posts the receive of step `s` into its buffer (free once step s - 2 was consumed).
    func post(step s: Int) throws {
        let source = group.rank(-s)
        guard s >= 1 && s < group.comm.size && expects(source) else { return }
        receives[s % 2] = try group.comm.irecv(receiveBuffers[s % 2], from: source, tag: MessageTag.of(kind, s))
    }

    /// The buffer for this step's outgoing partial, once its previous send has finished.
    func outgoing(step s: Int) throws -> Tensor {
        try group.waitAll([sends[s % 2]])
        return sendBuffers[s % 2]
    }

    /// Sends the first `count` values (all by default) of this step's outgoing buffer to `owner`.
    func send(step s: Int, to owner: Int, count: Int? = nil) throws {
        sends[s % 2] = try group.isend(sendBuffers[s % 2], count: count, to: owner, tag: MessageTag.of(kind, s))
    }

    /// Waits for step `s`'s incoming partial (if any) and hands it to `body`.
    func consume(step s: Int, _ body: (Tensor) -> Void) throws {
        guard let r = receives[s % 2] else { return }
        try group.waitAll([r])
        receives[s % 2] = nil
        body(receiveBuffers[s % 2])
    }

    func finish() throws { try group.waitAll(sends) }
}
