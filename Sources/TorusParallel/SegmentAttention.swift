import Dispatch
import TorusComm
import TorusModel
import TorusTensor
import TorusTrace

/// Attention between a rank's query segments and one block's key segments (each a contiguous
/// run of global positions), through `BlockAttention` and `AttentionMerge`; polls the given
/// requests between blocks so transfers in flight keep moving.
struct SegmentAttention {
    let shape: AttentionShape
    let causal: Bool
    /// Query rows per kernel call: the requests are polled between calls, so transfers keep
    /// moving during a long segment pair.
    static let rowsPerPoll = 512

    /// `s` cut into runs of at most `rowsPerPoll` query rows.
    static func rowGroups(_ s: SequenceSegment) -> [SequenceSegment] {
        stride(from: 0, to: s.count, by: rowsPerPoll).map {
            SequenceSegment(start: s.start + $0, count: min(rowsPerPoll, s.count - $0), localRow: s.localRow + $0)
        }
    }

    /// Whether any key of `k` is visible to some query of `q`.
    func visible(_ q: SequenceSegment, _ k: SequenceSegment) -> Bool {
        !causal || k.start <= q.start + q.count - 1
    }

    /// Whether any query segment sees any key segment.
    func anyVisible(_ qs: [SequenceSegment], _ ks: [SequenceSegment]) -> Bool {
        qs.contains { q in ks.contains { visible(q, $0) } }
    }

    /// Merges the attention of the queries against these keys into `out` / `lse`.
    func forward(querySegments: [SequenceSegment], keySegments: [SequenceSegment], q: UnsafePointer<Float>,
                 k: UnsafePointer<Float>, v: UnsafePointer<Float>, out: UnsafeMutablePointer<Float>, lse: UnsafeMutablePointer<Float>,
                 partOut: Tensor, partLSE: Tensor, poll: [Request]) {
        let qw = shape.queryWidth, kw = shape.keyValueWidth, hq = shape.queryHeads
        for qs in querySegments.flatMap(Self.rowGroups) {
            for ks in keySegments where visible(qs, ks) {
                Timeline.measure("attention forward \(qs.start)x\(ks.start)") {
                    BlockAttention.forward(q: q + qs.localRow * qw, k: k + ks.localRow * kw, v: v + ks.localRow * kw,
                                           queryCount: qs.count, keyCount: ks.count, shape: shape,
                                           mask: AttentionMask(causal: causal, queryOffset: qs.start, keyOffset: ks.start),
                                           out: partOut.pointer, lse: partLSE.pointer)
                    AttentionMerge.merge(out: out + qs.localRow * qw, lse: lse + qs.localRow * hq,
                                         otherOut: partOut.pointer, otherLSE: partLSE.pointer,
                                         rows: qs.count, heads: hq, headDim: shape.headDim)
                }
                for r in poll where !r.isComplete { _ = try? r.test() }
            }
        }
    }

    /// Adds these keys' contribution to dq (query rows) and dk, dv (key rows).
    func backward(querySegments: [SequenceSegment], keySegments: [SequenceSegment], q: UnsafePointer<Float>,
                  k: UnsafePointer<Float>, v: UnsafePointer<Float>, dOut: UnsafePointer<Float>,
                  lse: UnsafePointer<Float>, rowDot: UnsafePointer<Float>,
                  dq: UnsafeMutablePointer<Float>, dk: UnsafeMutablePointer<Float>, dv: UnsafeMutablePointer<Float>,
                  poll: [Request]) {
        let qw = shape.queryWidth, kw = shape.keyValueWidth, hq = shape.queryHeads
        for qs in querySegments.flatMap(Self.rowGroups) {
            for ks in keySegments where visible(qs, ks) {
                Timeline.measure("attention backward \(qs.start)x\(ks.start)") {
                    BlockAttention.backward(q: q + qs.localRow * qw, k: k + ks.localRow * kw, v: v + ks.localRow * kw,
                                            dOut: dOut + qs.localRow * qw, lse: lse + qs.localRow * hq,
                                            rowDot: rowDot + qs.localRow * hq, queryCount: qs.count, keyCount: ks.count,
                                            shape: shape, mask: AttentionMask(causal: causal, queryOffset: qs.start, keyOffset: ks.start),
                                            dq: dq + qs.localRow * qw, dk: dk + ks.localRow * kw, dv: dv + ks.localRow * kw)
                }
                for r in poll where !r.isComplete { _ = try? r.test() }
            }
        }
    }
}

/// A sequence-parallel attention method: each rank passes its rows of Q, K, V (in the
/// layout's local order) and gets its rows of the exact full-sequence result.
public protocol SequenceParallelAttention: SequenceAttention {
    var layout: SequenceLayout { get }
    var comm: Communicator { get }
    /// Attention of this rank's rows of `queries` (`q` holds them compactly, in local order)
    /// against every rank's keys and values (`k`, `v`: all of this rank's rows of the layout):
    /// output [m, Hq*d] and log-sum-exp [m, Hq] for its m query rows.
    func forward(queries: QueryRows, q: Tensor, k: Tensor, v: Tensor) throws -> (out: Tensor, lse: Tensor)
}

extension SequenceParallelAttention {
    public var localPositions: [Int32] { layout.positions(rank: comm.rank).map { Int32($0) } }
}

/// The methods by name, as in configs: `ring` or `tokenring`.
public enum SequenceParallelMethod: String, Sendable, CaseIterable {
    case ring, tokenring

    public init(name: String) throws {
        guard let m = SequenceParallelMethod(rawValue: name) else { throw SequenceParallelError.unknownMethod(name) }
        self = m
    }

    /// How many messages of each stream the method numbers in a group of `groupSize` ranks.
    public func messages(groupSize p: Int) -> [(kind: MessageKind, count: Int)] {
        switch self {
        case .ring: return [(.ringKeysValues, p), (.ringBackwardKeysValues, p), (.ringGradients, p)]
        case .tokenring:
            let parts = TokenRingAttention.partsPerStep
            return [(.tokenRingQueries, p * parts), (.tokenRingPartials, p), (.tokenRingBackwardPacks, p * parts), (.tokenRingBackwardPartials, p)]
        }
    }

    /// Throws unless every tag the method uses in a group of `groupSize` is within `upperBound`.
    public func checkTags(groupSize: Int, upperBound: Int) throws {
        for m in messages(groupSize: groupSize) {
            try MessageTag.check(m.kind, count: m.count, upperBound: upperBound, what: "\(rawValue) on \(groupSize) ranks")
        }
    }

    public func make(comm: Communicator, layout: SequenceLayout, shape: AttentionShape, causal: Bool) throws -> SequenceParallelAttention {
        try checkTags(groupSize: comm.size, upperBound: comm.tagUpperBound)
        switch self {
        case .ring: return try RingAttention(comm: comm, layout: layout, shape: shape, causal: causal)
        case .tokenring: return try TokenRingAttention(comm: comm, layout: layout, shape: shape, causal: causal)
        }
    }
}

/// The ranks of one sequence-parallel group arranged in a ring, with the layout of the
/// sequence over them; the common part of Ring Attention and TokenRing.
public class SequenceParallelGroup {
    public let comm: Communicator
    public let layout: SequenceLayout
    public let shape: AttentionShape
    public let causal: Bool
    let blocks: SegmentAttention

    public init(comm: Communicator, layout: SequenceLayout, shape: AttentionShape, causal: Bool) throws {
        guard layout.ranks == comm.size else {
            throw SequenceParallelError.shapeMismatch("layout is for \(layout.ranks) ranks, the communicator has \(comm.size)")
        }
        self.comm = comm
        self.layout = layout
        self.shape = shape
        self.causal = causal
        self.blocks = SegmentAttention(shape: shape, causal: causal)
    }

    var next: Int { (comm.rank + 1) % comm.size }
    var prev: Int { (comm.rank + comm.size - 1) % comm.size }
    /// The rank `offset` places after this one around the ring.
    func rank(_ offset: Int) -> Int { ((comm.rank + offset) % comm.size + comm.size) % comm.size }

    /// Bytes this rank sent and seconds it spent blocked waiting for transfers (communication
    /// not hidden behind compute, plus waiting for slower ranks), since the last reset.
    public internal(set) var bytesSent = 0
    public private(set) var waitSeconds = 0.0

    public func resetStatistics() { bytesSent = 0; waitSeconds = 0 }

    func isend(_ t: Tensor, offset: Int = 0, count: Int? = nil, to dest: Int, tag: Int) throws -> Request {
        let n = count ?? t.count - offset
        bytesSent += n * 4
        return try comm.isend(t.pointer + offset, count: n, to: dest, tag: tag, keepAlive: t)
    }

    /// One hop around the ring: receive the previous rank's block into `incoming` while
    /// `current` goes to the next rank (nonblocking both).
    func passAlong(_ current: Tensor, receiving incoming: Tensor, tag: Int) throws -> [Request] {
        [try comm.irecv(incoming, from: prev, tag: tag), try isend(current, to: next, tag: tag)]
    }

    func waitAll(_ requests: [Request?]) throws {
        let t0 = DispatchTime.now().uptimeNanoseconds
        for r in requests { try r?.wait() }
        waitSeconds += Double(DispatchTime.now().uptimeNanoseconds - t0) / 1e9
    }

    func checkQueries(_ queries: QueryRows, _ q: Tensor) throws {
        guard queries.segments.count == comm.size else {
            throw SequenceParallelError.shapeMismatch("query rows for \(queries.segments.count) ranks in a group of \(comm.size)")
        }
        let m = queries.count(rank: comm.rank)
        guard q.count == m * shape.queryWidth else {
            throw SequenceParallelError.shapeMismatch("q has \(q.count) values, expected \(m) query rows of \(shape.queryWidth)")
        }
    }

    func checkRows(_ t: Tensor, width: Int, _ name: String) throws {
        guard t.count == layout.localCount * width else {
            throw SequenceParallelError.shapeMismatch("\(name) has \(t.count) values, expected \(layout.localCount) rows of \(width)")
        }
    }
}
