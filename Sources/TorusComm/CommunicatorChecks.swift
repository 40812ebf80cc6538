import Foundation
import TorusTensor

/// A failed self-check, naming the check, the rank and the first wrong value.
public struct CommunicatorCheckFailure: Error, CustomStringConvertible {
    public let check: String
    public let rank: Int
    public let detail: String
    public var description: String { "comm check '\(check)' failed on rank \(rank): \(detail)" }
}

/// Exercises every `Communicator` operation with data whose correct result each rank can
/// compute alone. Run under `mpirun` by `torus check comm` and by the multi-rank tests.
public struct CommunicatorChecks {
    public let comm: Communicator
    public let count: Int

    public init(comm: Communicator, count: Int) {
        self.comm = comm
        self.count = max(1, count)
    }

    /// Runs all checks; returns one line per check, throws on the first failure.
    public func runAll() throws -> [String] {
        var lines: [String] = []
        func run(_ name: String, _ body: () throws -> Void) throws {
            try body()
            lines.append("ok \(name)")
        }
        try run("allReduce sum/max/min", allReduce)
        try run("iallReduce with test polling", nonblockingAllReduce)
        try run("broadcast floats and bytes", broadcast)
        try run("allGather", allGather)
        try run("reduceScatter", reduceScatter)
        try run("uneven in-place reduce-scatter and all-gather (ZeRO-1)", unevenInPlace)
        try run("blocking send/recv", blockingPair)
        try run("nonblocking double-buffered ring exchange", ringExchange)
        try run("split into even/odd groups", split)
        try run("errors come back as MPIError", errorReporting)
        try comm.barrier()
        return lines
    }

    private func expect(_ check: String, _ got: Float, _ want: Float, index: Int) throws {
        if abs(got - want) > 1e-4 * max(1, abs(want)) {
            throw CommunicatorCheckFailure(check: check, rank: comm.rank, detail: "element \(index) is \(got), expected \(want)")
        }
    }

    private func value(rank: Int, index: Int) -> Float { Float(rank + 1) + Float(index % 97) * 0.25 }

    func allReduce() throws {
        let p = comm.size
        let t = Tensor(zeros: [count])
        for i in 0..<count { t[i] = value(rank: comm.rank, index: i) }
        try comm.allReduce(t)
        for i in 0..<count {
            let want = (0..<p).reduce(Float(0)) { $0 + value(rank: $1, index: i) }
            try expect("allReduce sum", t[i], want, index: i)
        }
        for i in 0..<count { t[i] = value(rank: comm.rank, index: i) }
        try comm.allReduce(t, op: .max)
        for i in 0..<count { try expect("allReduce max", t[i], value(rank: p - 1, index: i), index: i) }
        for i in 0..<count { t[i] = value(rank: comm.rank, index: i) }
        try comm.allReduce(t, op: .min)
        for i in 0..<count { try expect("allReduce min", t[i], value(rank: 0, index: i), index: i) }
        let d = try comm.allReduce([Double(comm.rank), 1])
        try expect("allReduce doubles", Float(d[1]), Float(p), index: 1)
        try expect("allReduce doubles", Float(d[0]), Float(p * (p - 1) / 2), index: 0)
    }

    func nonblockingAllReduce() throws {
        let t = Tensor(zeros: [count])
        for i in 0..<count { t[i] = value(rank: comm.rank, index: i) }
        let req = try comm.iallReduce(t)
        var polls = 0
        while try !req.test() { polls += 1 }
        for i in 0..<count {
            let want = (0..<comm.size).reduce(Float(0)) { $0 + value(rank: $1, index: i) }
            try expect("iallReduce", t[i], want, index: i)
        }
    }

    func broadcast() throws {
        let root = comm.size - 1
        let t = Tensor(zeros: [count])
        if comm.rank == root { for i in 0..<count { t[i] = value(rank: root, index: i) } }
        try comm.broadcast(t, root: root)
        for i in 0..<count { try expect("broadcast", t[i], value(rank: root, index: i), index: i) }
        let bytes = try comm.broadcast(bytes: comm.rank == 0 ? Array("torus".utf8) : [], root: 0)
        if bytes != Array("torus".utf8) {
            throw CommunicatorCheckFailure(check: "broadcast bytes", rank: comm.rank, detail: "got \(bytes)")
        }
    }

    func allGather() throws {
        let t = Tensor(zeros: [count]), out = Tensor(zeros: [count * comm.size])
        for i in 0..<count { t[i] = value(rank: comm.rank, index: i) }
        try comm.allGather(t, into: out)
        for r in 0..<comm.size {
            for i in 0..<count { try expect("allGather", out[r * count + i], value(rank: r, index: i), index: r * count + i) }
        }
    }

    func reduceScatter() throws {
        let p = comm.size
        let input = Tensor(zeros: [count * p]), out = Tensor(zeros: [count])
        for i in 0..<(count * p) { input[i] = value(rank: comm.rank, index: i) }
        try comm.reduceScatter(input, into: out)
        for i in 0..<count {
            let global = comm.rank * count + i
            let want = (0..<p).reduce(Float(0)) { $0 + value(rank: $1, index: global) }
            try expect("reduceScatter", out[i], want, index: i)
        }
    }

    /// Blocks of different sizes (rank r: count + r floats): the in-place nonblocking
    /// reduce-scatter leaves this rank's summed block at the buffer's start, and the in-place
    /// all-gather puts every rank's block back where it belongs.
    func unevenInPlace() throws {
        let p = comm.size
        let counts = (0..<p).map { count + $0 }, starts = counts.indices.map { counts[..<$0].reduce(0, +) }
        let total = counts.reduce(0, +)
        let buffer = Tensor(zeros: [total])
        for i in 0..<total { buffer[i] = value(rank: comm.rank, index: i) }
        try comm.ireduceScatterInPlace(buffer.pointer, counts: counts, keepAlive: buffer).wait()
        for i in 0..<counts[comm.rank] {
            let global = starts[comm.rank] + i
            try expect("in-place reduce-scatter", buffer[i], (0..<p).reduce(Float(0)) { $0 + value(rank: $1, index: global) }, index: i)
        }
        // Every rank writes its own block (rank r: r + 1 + index) and gathers the others'.
        for i in 0..<counts[comm.rank] { buffer[starts[comm.rank] + i] = Float(comm.rank + 1) + Float(i) }
        try comm.allGatherInPlace(buffer.pointer, counts: counts)
        for r in 0..<p {
            for i in 0..<counts[r] { try expect("in-place all-gather", buffer[starts[r] + i], Float(r + 1) + Float(i), index: starts[r] + i) }
        }
    }

    func blockingPair() throws {
        guard comm.size >= 2 else { return }
        let t = Tensor(zeros: [count])
        if comm.rank == 0 {
            for i in 0..<count { t[i] = value(rank: 0, index: i) }
            try comm.send(t, to: 1, tag: 7)
            try comm.recv(t, from: 1, tag: 8)
            for i in 0..<count { try expect("send/recv", t[i], value(rank: 1, index: i), index: i) }
        } else if comm.rank == 1 {
            try comm.recv(t, from: 0, tag: 7)
            for i in 0..<count { try expect("send/recv", t[i], value(rank: 0, index: i), index: i) }
            for i in 0..<count { t[i] = value(rank: 1, index: i) }
            try comm.send(t, to: 0, tag: 8)
        }
    }

    /// Each rank's block travels all the way around the ring, as KV blocks do in Ring Attention.
    func ringExchange() throws {
        let p = comm.size, next = (comm.rank + 1) % p, prev = (comm.rank + p - 1) % p
        var current = Tensor(zeros: [count]), incoming = Tensor(zeros: [count])
        for i in 0..<count { current[i] = value(rank: comm.rank, index: i) }
        var seen: [Int] = []
        for step in 0..<p {
            let owner = (comm.rank - step + p) % p
            var reqs: [Request] = []
            if step < p - 1 {
                reqs.append(try comm.irecv(incoming, from: prev, tag: MessageTag.of(.probe, step)))
                reqs.append(try comm.isend(current, to: next, tag: MessageTag.of(.probe, step)))
            }
            for i in 0..<count { try expect("ring step \(step)", current[i], value(rank: owner, index: i), index: i) }
            seen.append(owner)
            try Request.waitAll(reqs)
            swap(&current, &incoming)
        }
        if Set(seen) != Set(0..<p) {
            throw CommunicatorCheckFailure(check: "ring", rank: comm.rank, detail: "saw blocks of ranks \(seen)")
        }
    }

    func split() throws {
        let sub = try comm.split(color: comm.rank % 2, key: comm.rank)
        let members = (0..<comm.size).filter { $0 % 2 == comm.rank % 2 }
        guard sub.size == members.count, sub.rank == members.firstIndex(of: comm.rank) else {
            throw CommunicatorCheckFailure(check: "split", rank: comm.rank, detail: "rank \(sub.rank) of \(sub.size), expected \(members)")
        }
        let t = Tensor(shape: [1], values: [Float(comm.rank)])
        try sub.allReduce(t)
        try expect("split allReduce", t[0], Float(members.reduce(0, +)), index: 0)
    }

    func errorReporting() throws {
        let t = Tensor(zeros: [1])
        do {
            try comm.send(t, to: comm.size + 5, tag: 1)
            throw CommunicatorCheckFailure(check: "error", rank: comm.rank, detail: "send to a rank that does not exist succeeded")
        } catch let e as MPIError {
            guard e.call.contains("MPI_Send"), e.rank == comm.rank else {
                throw CommunicatorCheckFailure(check: "error", rank: comm.rank, detail: "unexpected error \(e)")
            }
        }
    }
}
