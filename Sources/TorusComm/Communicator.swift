import CMPI
import Foundation
import TorusTensor
import TorusTrace

/// Reduction operator of a collective.
public enum ReduceOp: Sendable {
    case sum, max, min
    var handle: MPI_Op {
        switch self {
        case .sum: return torus_mpi_op_sum()
        case .max: return torus_mpi_op_max()
        case .min: return torus_mpi_op_min()
        }
    }
}

/// A group of MPI ranks: point-to-point transfers and collectives on fp32 buffers.
///
/// Every call throws `MPIError` naming the call and this rank when MPI reports an error
/// (the communicator's error handler is set to return errors instead of aborting).
public final class Communicator: @unchecked Sendable {
    let handle: MPI_Comm?
    private let owned: Bool
    /// This process's rank in the group.
    public let rank: Int
    /// Number of ranks in the group.
    public let size: Int

    init(handle: MPI_Comm?, owned: Bool) {
        self.handle = handle
        self.owned = owned
        var r: Int32 = 0, s: Int32 = 0
        MPI_Comm_rank(handle, &r)
        MPI_Comm_size(handle, &s)
        rank = Int(r)
        size = Int(s)
    }

    deinit {
        var finalized: Int32 = 0
        MPI_Finalized(&finalized)
        if owned && finalized == 0 {
            var h: MPI_Comm? = handle
            MPI_Comm_free(&h)
        }
    }

    /// A sub-communicator of the ranks that pass the same `color`, ordered by `key`
    /// (then by rank in this group).
    public func split(color: Int, key: Int) throws -> Communicator {
        var out: MPI_Comm? = nil
        try check(MPI_Comm_split(handle, Int32(color), Int32(key), &out), "MPI_Comm_split", rank: rank)
        guard let sub = out else { throw MPIError(call: "MPI_Comm_split", rank: rank, code: -1, message: "no communicator returned") }
        MPI_Comm_set_errhandler(sub, torus_mpi_errors_return())
        return Communicator(handle: sub, owned: true)
    }

    // MARK: Point-to-point

    public func send(_ buffer: UnsafePointer<Float>, count: Int, to dest: Int, tag: Int = 0) throws {
        let call = "MPI_Send(\(count) floats to rank \(dest), tag \(tag))"
        let run = { try check(MPI_Send(buffer, Int32(count), torus_mpi_float(), Int32(dest), Int32(tag), self.handle), call, rank: self.rank) }
        if MessageTag.isTraced(tag) { try Timeline.measure(call, kind: .send, bytes: count * 4, run) } else { try run() }
    }

    public func recv(_ buffer: UnsafeMutablePointer<Float>, count: Int, from source: Int, tag: Int = 0) throws {
        let call = "MPI_Recv(\(count) floats from rank \(source), tag \(tag))"
        let run = {
            try check(MPI_Recv(buffer, Int32(count), torus_mpi_float(), Int32(source), Int32(tag), self.handle, torus_mpi_status_ignore()),
                      call, rank: self.rank)
        }
        if MessageTag.isTraced(tag) { try Timeline.measure(call, kind: .recv, bytes: count * 4, run) } else { try run() }
    }

    /// Starts sending; `keepAlive` (the buffer's owner) is retained until completion.
    public func isend(_ buffer: UnsafePointer<Float>, count: Int, to dest: Int, tag: Int = 0, keepAlive: AnyObject? = nil) throws -> Request {
        var req: MPI_Request? = torus_mpi_request_null()
        let call = "MPI_Isend(\(count) floats to rank \(dest), tag \(tag))"
        try check(MPI_Isend(buffer, Int32(count), torus_mpi_float(), Int32(dest), Int32(tag), handle, &req), call, rank: rank)
        return Request(handle: req, call: call, rank: rank, keepAlive: keepAlive, kind: .send, bytes: count * 4, traced: MessageTag.isTraced(tag))
    }

    /// Starts receiving; `keepAlive` (the buffer's owner) is retained until completion.
    public func irecv(_ buffer: UnsafeMutablePointer<Float>, count: Int, from source: Int, tag: Int = 0, keepAlive: AnyObject? = nil) throws -> Request {
        var req: MPI_Request? = torus_mpi_request_null()
        let call = "MPI_Irecv(\(count) floats from rank \(source), tag \(tag))"
        try check(MPI_Irecv(buffer, Int32(count), torus_mpi_float(), Int32(source), Int32(tag), handle, &req), call, rank: rank)
        return Request(handle: req, call: call, rank: rank, keepAlive: keepAlive, kind: .recv, bytes: count * 4, traced: MessageTag.isTraced(tag))
    }

    public func send(_ tensor: Tensor, to dest: Int, tag: Int = 0) throws {
        try send(tensor.pointer, count: tensor.count, to: dest, tag: tag)
    }

    public func recv(_ tensor: Tensor, from source: Int, tag: Int = 0) throws {
        try recv(tensor.pointer, count: tensor.count, from: source, tag: tag)
    }

    public func isend(_ tensor: Tensor, to dest: Int, tag: Int = 0) throws -> Request {
        try isend(tensor.pointer, count: tensor.count, to: dest, tag: tag, keepAlive: tensor)
    }

    public func irecv(_ tensor: Tensor, from source: Int, tag: Int = 0) throws -> Request {
        try irecv(tensor.pointer, count: tensor.count, from: source, tag: tag, keepAlive: tensor)
    }

    // MARK: Collectives

    /// Reduces `count` floats in place across all ranks; every rank gets the result.
    public func allReduce(_ buffer: UnsafeMutablePointer<Float>, count: Int, op: ReduceOp = .sum) throws {
        try Timeline.measure("MPI_Allreduce(\(count) floats)", kind: .collective, bytes: count * 4) {
            try check(MPI_Allreduce(torus_mpi_in_place(), buffer, Int32(count), torus_mpi_float(), op.handle, handle),
                  "MPI_Allreduce(\(count) floats)", rank: rank)
        }
    }

    public func allReduce(_ tensor: Tensor, op: ReduceOp = .sum) throws {
        try allReduce(tensor.pointer, count: tensor.count, op: op)
    }

    /// Starts an in-place all-reduce; the buffer must not be touched until the request completes.
    public func iallReduce(_ buffer: UnsafeMutablePointer<Float>, count: Int, op: ReduceOp = .sum, keepAlive: AnyObject? = nil) throws -> Request {
        var req: MPI_Request? = torus_mpi_request_null()
        let call = "MPI_Iallreduce(\(count) floats)"
        try check(MPI_Iallreduce(torus_mpi_in_place(), buffer, Int32(count), torus_mpi_float(), op.handle, handle, &req), call, rank: rank)
        return Request(handle: req, call: call, rank: rank, keepAlive: keepAlive, kind: .collective, bytes: count * 4)
    }

    public func iallReduce(_ tensor: Tensor, op: ReduceOp = .sum) throws -> Request {
        try iallReduce(tensor.pointer, count: tensor.count, op: op, keepAlive: tensor)
    }

    /// Reduces doubles across ranks (losses, counters, checksums).
    public func allReduce(_ values: [Double], op: ReduceOp = .sum) throws -> [Double] {
        var v = values
        try v.withUnsafeMutableBufferPointer { b in
            try check(MPI_Allreduce(torus_mpi_in_place(), b.baseAddress, Int32(b.count), torus_mpi_double(), op.handle, handle),
                      "MPI_Allreduce(\(b.count) doubles)", rank: rank)
        }
        return v
    }

    /// Copies `count` floats from `root` to every rank.
    public func broadcast(_ buffer: UnsafeMutablePointer<Float>, count: Int, root: Int = 0) throws {
        try check(MPI_Bcast(buffer, Int32(count), torus_mpi_float(), Int32(root), handle),
                  "MPI_Bcast(\(count) floats from rank \(root))", rank: rank)
    }

    public func broadcast(_ tensor: Tensor, root: Int = 0) throws {
        try broadcast(tensor.pointer, count: tensor.count, root: root)
    }

    /// Copies bytes from `root` to every rank (its length first); returns root's bytes.
    public func broadcast(bytes: [UInt8], root: Int = 0) throws -> [UInt8] {
        var length = [Double(bytes.count)]
        try length.withUnsafeMutableBufferPointer { b in
            try check(MPI_Bcast(b.baseAddress, 1, torus_mpi_double(), Int32(root), handle), "MPI_Bcast(length)", rank: rank)
        }
        var out = rank == root ? bytes : [UInt8](repeating: 0, count: Int(length[0]))
        try out.withUnsafeMutableBufferPointer { b in
            try check(MPI_Bcast(b.baseAddress, Int32(b.count), torus_mpi_byte(), Int32(root), handle),
                      "MPI_Bcast(\(b.count) bytes from rank \(root))", rank: rank)
        }
        return out
    }

    /// Gathers `count` floats from every rank into `output` (`count * size` floats, rank order).
    public func allGather(_ input: UnsafePointer<Float>, count: Int, into output: UnsafeMutablePointer<Float>) throws {
        try check(MPI_Allgather(input, Int32(count), torus_mpi_float(), output, Int32(count), torus_mpi_float(), handle),
                  "MPI_Allgather(\(count) floats per rank)", rank: rank)
    }

    public func allGather(_ input: Tensor, into output: Tensor) throws {
        precondition(output.count == input.count * size, "allGather output needs \(input.count * size) floats, has \(output.count)")
        try allGather(input.pointer, count: input.count, into: output.pointer)
    }

    /// Sums `count * size` floats across ranks and leaves block `rank` (`count` floats) here.
    public func reduceScatter(_ input: UnsafePointer<Float>, into output: UnsafeMutablePointer<Float>, count: Int, op: ReduceOp = .sum) throws {
        try check(MPI_Reduce_scatter_block(input, output, Int32(count), torus_mpi_float(), op.handle, handle),
                  "MPI_Reduce_scatter_block(\(count) floats per rank)", rank: rank)
    }

    public func reduceScatter(_ input: Tensor, into output: Tensor, op: ReduceOp = .sum) throws {
        precondition(input.count == output.count * size, "reduceScatter input needs \(output.count * size) floats, has \(input.count)")
        try reduceScatter(input.pointer, into: output.pointer, count: output.count, op: op)
    }

    /// Starts an in-place reduce-scatter with per-rank block sizes: `buffer` holds
    /// `counts.reduce(+)` floats in rank order, and this rank's block of the sum lands at the
    /// start of `buffer` (MPI's in-place rule; the rest is left undefined). `keepAlive` holds
    /// the buffer's owner until completion.
    public func ireduceScatterInPlace(_ buffer: UnsafeMutablePointer<Float>, counts: [Int], keepAlive: AnyObject? = nil) throws -> Request {
        precondition(counts.count == size, "ireduceScatter needs one count per rank (\(size)), has \(counts.count)")
        let held = Int32Array(counts)
        var req: MPI_Request? = torus_mpi_request_null()
        let total = counts.reduce(0, +)
        let call = "MPI_Ireduce_scatter(\(total) floats)"
        try check(MPI_Ireduce_scatter(torus_mpi_in_place(), buffer, held.pointer, torus_mpi_float(), ReduceOp.sum.handle, handle, &req),
                  call, rank: rank)
        return Request(handle: req, call: call, rank: rank, keepAlive: KeptAlive([held] + (keepAlive.map { [$0] } ?? [])),
                       kind: .collective, bytes: total * 4)
    }

    /// Gathers in place: block r of `buffer` (`counts[r]` floats at the sum of the counts
    /// before it) comes from rank r; this rank's block is already in place.
    public func allGatherInPlace(_ buffer: UnsafeMutablePointer<Float>, counts: [Int]) throws {
        precondition(counts.count == size, "allGatherInPlace needs one count per rank (\(size)), has \(counts.count)")
        let (held, displacements, at) = Int32Array.countsAndDisplacements(counts)
        try Timeline.measure("MPI_Allgatherv(\(at) floats)", kind: .collective, bytes: at * 4) {
            try check(MPI_Allgatherv(torus_mpi_in_place(), 0, torus_mpi_float(), buffer, held.pointer, displacements.pointer,
                                     torus_mpi_float(), handle), "MPI_Allgatherv(\(at) floats)", rank: rank)
        }
    }

    /// Gathers `counts[r]` floats from every rank r into `output` on `root` (rank order,
    /// packed); `output` is ignored on the other ranks.
    public func gather(_ input: UnsafePointer<Float>, into output: UnsafeMutablePointer<Float>?, counts: [Int], root: Int = 0) throws {
        precondition(counts.count == size, "gather needs one count per rank (\(size)), has \(counts.count)")
        let (held, displacements, at) = Int32Array.countsAndDisplacements(counts)
        try Timeline.measure("MPI_Gatherv(\(at) floats)", kind: .collective, bytes: counts[rank] * 4) {
            try check(MPI_Gatherv(input, Int32(counts[rank]), torus_mpi_float(), output, held.pointer, displacements.pointer,
                                  torus_mpi_float(), Int32(root), handle), "MPI_Gatherv(\(at) floats to rank \(root))", rank: rank)
        }
    }

    /// Scatters from `root`: rank r receives `counts[r]` floats into `output`, block r of
    /// `input` (packed in rank order; read on `root` only).
    public func scatter(_ input: UnsafePointer<Float>?, counts: [Int], into output: UnsafeMutablePointer<Float>, root: Int = 0) throws {
        precondition(counts.count == size, "scatter needs one count per rank (\(size)), has \(counts.count)")
        let (held, displacements, at) = Int32Array.countsAndDisplacements(counts)
        try Timeline.measure("MPI_Scatterv(\(at) floats)", kind: .collective, bytes: counts[rank] * 4) {
            try check(MPI_Scatterv(input, held.pointer, displacements.pointer, torus_mpi_float(), output, Int32(counts[rank]),
                                   torus_mpi_float(), Int32(root), handle), "MPI_Scatterv(\(at) floats from rank \(root))", rank: rank)
        }
    }

    public func barrier() throws {
        try check(MPI_Barrier(handle), "MPI_Barrier", rank: rank)
    }

    /// Ends every process of the job with `code` (Open MPI's `MPI_Abort`).
    public func abort(code: Int32 = 1) -> Never {
        MPI_Abort(handle, code)
        exit(code)
    }
}

/// Int32 counts that an MPI call reads, alive as long as this object.
final class Int32Array {
    let pointer: UnsafeMutablePointer<Int32>
    init(_ values: [Int]) {
        pointer = .allocate(capacity: max(1, values.count))
        for (i, v) in values.enumerated() { pointer[i] = Int32(v) }
    }
    deinit { pointer.deallocate() }

    /// The counts of a vector collective, each block's offset (the counts before it) and the total.
    static func countsAndDisplacements(_ counts: [Int]) -> (counts: Int32Array, displacements: Int32Array, total: Int) {
        var offsets: [Int] = [], at = 0
        for c in counts { offsets.append(at); at += c }
        return (Int32Array(counts), Int32Array(offsets), at)
    }
}

/// Several objects a request keeps alive.
final class KeptAlive {
    let objects: [AnyObject]
    init(_ objects: [AnyObject]) { self.objects = objects }
}
