import Foundation
import TorusComm
import TorusTensor

/// Compares a sequence-parallel attention method with the single-rank computation on the same
/// inputs: every rank builds the same global Q, K, V and dO from a seed, runs the one-block
/// reference on the whole sequence, and checks its slice of out, lse, dQ, dK and dV.
public struct SequenceParallelChecks {
    public struct Case: Sendable, CustomStringConvertible {
        public var layout: SequenceLayoutKind
        public var causal: Bool
        public var queryHeads: Int
        public var keyValueHeads: Int
        public var description: String {
            "\(layout.rawValue) \(causal ? "causal" : "full") heads \(queryHeads)/\(keyValueHeads)"
        }
    }

    public let comm: Communicator
    public let method: SequenceParallelMethod
    public let chunkTokens: Int
    public let headDim: Int

    public init(comm: Communicator, method: SequenceParallelMethod, chunkTokens: Int = 5, headDim: Int = 8) {
        self.comm = comm
        self.method = method
        self.chunkTokens = chunkTokens
        self.headDim = headDim
    }

    public static var allCases: [Case] {
        var cases: [Case] = []
        for layout in SequenceLayoutKind.allCases {
            for causal in [true, false] {
                for (hq, hkv) in [(4, 4), (4, 2), (4, 1)] {
                    cases.append(Case(layout: layout, causal: causal, queryHeads: hq, keyValueHeads: hkv))
                }
            }
        }
        return cases
    }

    /// Largest absolute error over out, lse, dq, dk, dv for one case (max over ranks).
    public func run(_ c: Case) throws -> [String: Double] {
        let p = comm.size
        // chunkTokens per zigzag chunk: S = 2P * chunkTokens (valid for both layouts).
        let length = 2 * p * chunkTokens
        let layout = try SequenceLayout(kind: c.layout, ranks: p, length: length)
        let shape = AttentionShape(queryHeads: c.queryHeads, keyValueHeads: c.keyValueHeads, headDim: headDim)
        var g = SeededGenerator(seed: 77)
        func random(_ rows: Int, _ width: Int) -> Tensor {
            let t = Tensor(zeros: [rows, width]); t.fillNormal(std: 1, generator: &g); return t
        }
        let q = random(length, shape.queryWidth), k = random(length, shape.keyValueWidth)
        let v = random(length, shape.keyValueWidth), dOut = random(length, shape.queryWidth)
        // Reference: the whole sequence as one block.
        let out = Tensor(zeros: [length, shape.queryWidth]), lse = Tensor(zeros: [length, shape.queryHeads])
        let mask = AttentionMask(causal: c.causal)
        BlockAttention.forward(q: q.pointer, k: k.pointer, v: v.pointer, queryCount: length, keyCount: length,
                               shape: shape, mask: mask, out: out.pointer, lse: lse.pointer)
        let rowDot = Tensor(zeros: [length, shape.queryHeads])
        BlockAttention.rowDot(dOut: dOut.pointer, out: out.pointer, rows: length, shape: shape, result: rowDot.pointer)
        let dq = Tensor(zeros: q.shape), dk = Tensor(zeros: k.shape), dv = Tensor(zeros: v.shape)
        BlockAttention.backward(q: q.pointer, k: k.pointer, v: v.pointer, dOut: dOut.pointer, lse: lse.pointer,
                                rowDot: rowDot.pointer, queryCount: length, keyCount: length, shape: shape, mask: mask,
                                dq: dq.pointer, dk: dk.pointer, dv: dv.pointer)
        let rows = layout.positions(rank: comm.rank)
        func rowsOf(_ t: Tensor, _ positions: [Int]) -> Tensor {
            let width = t.count / length
            let l = Tensor(zeros: [positions.count, width])
            for (i, r) in positions.enumerated() { (l.pointer + i * width).update(from: t.pointer + r * width, count: width) }
            return l
        }
        func local(_ t: Tensor) -> Tensor { rowsOf(t, rows) }
        let ring = try method.make(comm: comm, layout: layout, shape: shape, causal: c.causal)
        let (pOut, pLSE) = try ring.forward(q: local(q), k: local(k), v: local(v))
        let grads = try ring.backward(q: local(q), k: local(k), v: local(v), out: pOut, lse: pLSE, dOut: local(dOut))
        func maxError(_ a: Tensor, _ b: Tensor) -> Double {
            var e = 0.0
            for i in 0..<a.count {
                if a[i] == b[i] { continue }  // also equal infinities
                e = max(e, Double(abs(a[i] - b[i])))
            }
            return e
        }
        var errors = ["out": maxError(pOut, local(out)), "lse": maxError(pLSE, local(lse)),
                      "dq": maxError(grads.dq, local(dq)), "dk": maxError(grads.dk, local(dk)), "dv": maxError(grads.dv, local(dv))]
        // A subset of query rows (a chunk-reuse prefill's selection) against every key: a
        // random third of the positions, then the same with the last rank asking for none.
        var pick = SeededGenerator(seed: 91)
        let random = (0..<length).map { _ in pick.next() % 3 == 0 }
        let last = Set(layout.positions(rank: p - 1))
        for (name, selected) in [("subset", random), ("subset-idle", random.indices.map { random[$0] && !last.contains($0) })] {
            let queries = try QueryRows(layout: layout, selected: selected)
            let mine = rows.filter { selected[$0] }
            let (sOut, sLSE) = try ring.forward(queries: queries, q: rowsOf(q, mine), k: local(k), v: local(v))
            errors["out(\(name))"] = maxError(sOut, rowsOf(out, mine))
            errors["lse(\(name))"] = maxError(sLSE, rowsOf(lse, mine))
        }
        let keys = errors.keys.sorted()
        let worst = try comm.allReduce(keys.map { errors[$0] ?? .infinity }, op: .max)
        return Dictionary(uniqueKeysWithValues: zip(keys, worst))
    }
}
