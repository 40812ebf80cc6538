import CMPI
import TorusTrace

/// A nonblocking MPI operation in flight. Keeps its buffer's owner alive until completion.
public final class Request: @unchecked Sendable {
    var handle: MPI_Request?
    let call: String
    let rank: Int
    private var keepAlive: AnyObject?
    /// True once the operation has completed (by `test` or `wait`).
    public private(set) var isComplete = false
    let kind: SpanKind
    let bytes: Int
    let posted: UInt64
    /// Whether the operation is recorded on the timeline (heartbeats are not).
    let timeline: Timeline?

    init(handle: MPI_Request?, call: String, rank: Int, keepAlive: AnyObject?, kind: SpanKind = .send, bytes: Int = 0,
         traced: Bool = true) {
        self.handle = handle
        self.call = call
        self.rank = rank
        self.keepAlive = keepAlive
        self.kind = kind
        self.bytes = bytes
        self.timeline = traced ? Timeline.current : nil
        self.posted = timeline == nil ? 0 : Timeline.now()
    }

    /// Whether the operation has completed; drives MPI progress.
    public func test() throws -> Bool {
        if isComplete { return true }
        var flag: Int32 = 0
        try check(MPI_Test(&handle, &flag, torus_mpi_status_ignore()), "MPI_Test(\(call))", rank: rank)
        if flag != 0 { finish() }
        return isComplete
    }

    /// Blocks until the operation completes.
    public func wait() throws {
        if isComplete { return }
        let t0 = timeline == nil ? 0 : Timeline.now()
        try check(MPI_Wait(&handle, torus_mpi_status_ignore()), "MPI_Wait(\(call))", rank: rank)
        timeline?.record("wait " + call, kind: .wait, start: t0, end: Timeline.now())
        finish()
    }

    /// Cancels an operation that may never complete (a receive no one will match) and
    /// releases it.
    public func cancel() throws {
        if isComplete { return }
        try check(MPI_Cancel(&handle), "MPI_Cancel(\(call))", rank: rank)
        try check(MPI_Wait(&handle, torus_mpi_status_ignore()), "MPI_Wait(cancelled \(call))", rank: rank)
        isComplete = true
        keepAlive = nil
    }

    private func finish() {
        isComplete = true
        keepAlive = nil
        // The transfer was in flight from posting until completion was observed.
        timeline?.record(call, kind: kind, start: posted, end: Timeline.now(), bytes: bytes)
    }

    /// Waits for all requests.
    public static func waitAll(_ requests: [Request]) throws {
        for r in requests { try r.wait() }
    }
}
