import Foundation
import TorusComm
import TorusTensor

/// Ring Attention: every rank keeps its queries; keys and values travel around the ring one
/// hop per step (double-buffered nonblocking transfers) while each rank attends its queries to
/// the block it holds and merges the partials. In backward the key/value blocks travel again
/// and their gradients follow one step behind, accumulated by every rank they pass, so each
/// block's complete dK, dV arrive home after P hops.
public final class RingAttention: SequenceParallelGroup, SequenceParallelAttention {

    /// Attention output [n, Hq*d] and log-sum-exp [n, Hq] of this rank's queries against the
    /// whole sequence; `q` [n, Hq*d], `k` and `v` [n, Hkv*d] hold this rank's rows.
    public func forward(q: Tensor, k: Tensor, v: Tensor) throws -> (out: Tensor, lse: Tensor) {
        try checkRows(q, width: shape.queryWidth, "q")
        return try forward(queries: QueryRows(wholeLayout: layout), q: q, k: k, v: v)
    }

    /// Attention of this rank's rows of `queries` (`q` holds them compactly) against every
    /// rank's keys and values (`k`, `v`: all of this rank's rows of the layout).
    public func forward(queries: QueryRows, q: Tensor, k: Tensor, v: Tensor) throws -> (out: Tensor, lse: Tensor) {
        let n = layout.localCount, kw = shape.keyValueWidth, m = queries.count(rank: comm.rank)
        try checkQueries(queries, q); try checkRows(k, width: kw, "k"); try checkRows(v, width: kw, "v")
        let out = Tensor(zeros: [m, shape.queryWidth]), lse = Tensor(zeros: [m, shape.queryHeads])
        lse.fill(-.infinity)
        let scratch = min(max(m, 1), SegmentAttention.rowsPerPoll)
        let partOut = Tensor(zeros: [scratch, shape.queryWidth]), partLSE = Tensor(zeros: [scratch, shape.queryHeads])
        // Buffers hold [K; V] of one block.
        var current = Tensor.concatenating([k, v]), incoming = Tensor(zeros: [2 * n * kw])
        let mySegments = queries.segments[comm.rank]
        for step in 0..<comm.size {
            let owner = rank(-step)
            let requests = step < comm.size - 1 ? try passAlong(current, receiving: incoming, tag: MessageTag.of(.ringKeysValues, step)) : []
            blocks.forward(querySegments: mySegments, keySegments: layout.segments(rank: owner), q: q.pointer,
                           k: current.pointer, v: current.pointer + n * kw, out: out.pointer, lse: lse.pointer,
                           partOut: partOut, partLSE: partLSE, poll: requests)
            try waitAll(requests)
            swap(&current, &incoming)
        }
        return (out, lse)
    }

    /// Gradients of this rank's q, k, v given the final `out`, `lse` and the output gradient.
    public func backward(q: Tensor, k: Tensor, v: Tensor, out: Tensor, lse: Tensor, dOut: Tensor) throws -> (dq: Tensor, dk: Tensor, dv: Tensor) {
        let n = layout.localCount, kw = shape.keyValueWidth
        try checkRows(dOut, width: shape.queryWidth, "dOut")
        let rowDot = Tensor(zeros: [n, shape.queryHeads])
        BlockAttention.rowDot(dOut: dOut.pointer, out: out.pointer, rows: n, shape: shape, result: rowDot.pointer)
        let dq = Tensor(zeros: [n, shape.queryWidth])
        var kv = Tensor.concatenating([k, v]), kvIncoming = Tensor(zeros: [2 * n * kw])
        // This rank's contribution to the block it holds, and the accumulated gradient of that
        // block from the ranks before it: [dK; dV] each.
        let local = Tensor(zeros: [2 * n * kw])
        var accumulated = Tensor(zeros: [2 * n * kw]), accumulatedIncoming = Tensor(zeros: [2 * n * kw])
        var gradSend: Request?
        let mySegments = layout.segments(rank: comm.rank)
        for step in 0..<comm.size {
            let owner = rank(-step)
            let kvRequests = step < comm.size - 1 ? try passAlong(kv, receiving: kvIncoming, tag: MessageTag.of(.ringBackwardKeysValues, step)) : []
            // The accumulated gradient of this block (from ranks owner..rank-1) arrives while we compute.
            var gradRecv: Request?
            if step > 0 { gradRecv = try comm.irecv(accumulatedIncoming, from: prev, tag: MessageTag.of(.ringGradients, step)) }
            local.fill(0)
            blocks.backward(querySegments: mySegments, keySegments: layout.segments(rank: owner), q: q.pointer,
                            k: kv.pointer, v: kv.pointer + n * kw, dOut: dOut.pointer, lse: lse.pointer, rowDot: rowDot.pointer,
                            dq: dq.pointer, dk: local.pointer, dv: local.pointer + n * kw,
                            poll: kvRequests + [gradRecv, gradSend].compactMap { $0 })
            try waitAll([gradSend])
            // At step 0 `accumulated` is still all zeros.
            if let gradRecv {
                try waitAll([gradRecv])
                swap(&accumulated, &accumulatedIncoming)
            }
            VectorMath.add(local.pointer, into: accumulated.pointer, count: local.count)
            // Pass the running gradient on; after the last step it reaches the block's owner.
            gradSend = try isend(accumulated, to: next, tag: MessageTag.of(.ringGradients, (step + 1) % comm.size))
            try waitAll(kvRequests)
            swap(&kv, &kvIncoming)
        }
        // Our own block's complete gradient comes back from the previous rank.
        // (into the buffer not being sent: the last send is from `accumulated`).
        let home = accumulatedIncoming
        try waitAll([try comm.irecv(home, from: prev, tag: MessageTag.of(.ringGradients, 0))])
        try waitAll([gradSend])
        return (dq, home.view(offset: 0, shape: [n, kw]), home.view(offset: n * kw, shape: [n, kw]))
    }
}
