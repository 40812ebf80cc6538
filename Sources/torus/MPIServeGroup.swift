import Foundation
import TorusComm
import TorusModel
import TorusParallel
import TorusServe
import TorusTensor

/// The ranks of `mpirun ... torus serve` as the engine's serving group: step plans go from
/// rank 0 to each rank by point-to-point messages (a waiting rank polls with growing sleeps, so
/// an idle server does not spin its cores), attention partials meet in an all-gather, and long
/// prompts are prefilled with Ring Attention or TokenRing over the given layout.
final class MPIServeGroup: ServeGroup {
    let comm: Communicator
    let method: SequenceParallelMethod
    let layout: SequenceLayoutKind
    private static let headerTag = MessageTag.of(.servePlanHeader, 0), planTag = MessageTag.of(.servePlan, 0),
        heartbeatTag = MessageTag.of(.serveHeartbeat, 0)
    /// A rank silent this long is taken for dead.
    static let heartbeatTimeout = 1.5

    private let stateLock = NSLock()
    private var stopping = false
    private var backgroundThreads: [DispatchSemaphore] = []

    private var isStopping: Bool { stateLock.lock(); defer { stateLock.unlock() }; return stopping }

    /// Starts `body` on a thread that `stopBackgroundThreads` waits for.
    private func background(_ name: String, _ body: @escaping () -> Void) {
        let done = DispatchSemaphore(value: 0)
        stateLock.lock()
        backgroundThreads.append(done)
        stateLock.unlock()
        let thread = Thread {
            body()
            done.signal()
        }
        thread.name = name
        thread.start()
    }

    /// Stops the heartbeat and watchdog threads and waits for them (before MPI is finalised, and
    /// on rank 0 before the other ranks are told to stop, so their silence is not taken for death).
    func stopBackgroundThreads() {
        stateLock.lock()
        stopping = true
        let threads = backgroundThreads
        backgroundThreads = []
        stateLock.unlock()
        for t in threads { t.wait() }
    }

    init(comm: Communicator, method: SequenceParallelMethod, layout: SequenceLayoutKind) {
        self.comm = comm
        self.method = method
        self.layout = layout
    }

    /// Ranks other than 0: a thread that tells rank 0 "alive" every 100 ms, even mid-step.
    func startHeartbeat() {
        let comm = self.comm
        background("torus-heartbeat") { [unowned self] in
            var beat: [Float] = [1]
            while !self.isStopping {
                let sent = (try? beat.withUnsafeMutableBufferPointer { try comm.send($0.baseAddress!, count: 1, to: 0, tag: Self.heartbeatTag) }) != nil
                if !sent { return }
                usleep(100_000)
            }
        }
    }

    /// Rank 0: a thread that calls `onSilent(rank)` once when a rank has sent no heartbeat for
    /// `heartbeatTimeout` seconds (it died, or its host is gone).
    func watchHeartbeats(onSilent: @escaping @Sendable (Int) -> Void) {
        let comm = self.comm, size = self.size
        background("torus-watchdog") { [unowned self] in
            var last = [Date](repeating: Date(), count: size)
            let buffers = (0..<size).map { _ in Tensor(zeros: [1]) }
            var pending: [Int: Request] = [:]
            defer { for r in pending.values { try? r.cancel() } }
            while !self.isStopping {
                for r in 1..<size {
                    if pending[r] == nil { pending[r] = try? comm.irecv(buffers[r], from: r, tag: Self.heartbeatTag) }
                    if let req = pending[r], (try? req.test()) == true {
                        last[r] = Date()
                        pending[r] = nil
                    }
                    if Date().timeIntervalSince(last[r]) > Self.heartbeatTimeout {
                        onSilent(r)
                        return
                    }
                }
                usleep(20_000)
            }
        }
    }

    var rank: Int { comm.rank }
    var size: Int { comm.size }

    func exchangePlan(_ words: [Int32]) throws -> [Int32] {
        if rank == 0 {
            // Nonblocking to every rank at once, so a large plan (a long prompt's tokens and
            // block tables) travels to all ranks concurrently.
            let header = Tensor(shape: [1], values: [Float(bitPattern: UInt32(words.count))])
            let payload = Tensor(shape: [words.count], values: words.map { Float(bitPattern: UInt32(bitPattern: $0)) })
            var sends: [Request] = []
            for r in 1..<size {
                sends.append(try comm.isend(header, to: r, tag: Self.headerTag))
                if !words.isEmpty { sends.append(try comm.isend(payload, to: r, tag: Self.planTag)) }
            }
            try Request.waitAll(sends)
            return words
        }
        let header = Tensor(zeros: [1])
        let request = try comm.irecv(header, from: 0, tag: Self.headerTag)
        var pause: useconds_t = 20
        while try !request.test() {
            usleep(pause)
            pause = min(1000, pause * 2)
        }
        let count = Int(header[0].bitPattern)
        guard count > 0 else { return [] }
        var payload = [Float](repeating: 0, count: count)
        try payload.withUnsafeMutableBufferPointer { try comm.recv($0.baseAddress!, count: count, from: 0, tag: Self.planTag) }
        return payload.map { Int32(bitPattern: $0.bitPattern) }
    }

    func allGather(_ input: UnsafePointer<Float>, count: Int, into output: UnsafeMutablePointer<Float>) throws {
        try comm.allGather(input, count: count, into: output)
    }

    var prefillGranularity: Int { layout == .zigzag ? 2 * size : size }

    func prefillPositions(length: Int) throws -> [[Int]] {
        let l = try SequenceLayout(kind: layout, ranks: size, length: length)
        return (0..<size).map { l.positions(rank: $0) }
    }

    func prefillAttention(length: Int, shape: AttentionShape) throws -> SequenceAttention {
        try method.make(comm: comm, layout: SequenceLayout(kind: layout, ranks: size, length: length), shape: shape, causal: true)
    }

    func fusionGroup(length: Int, shape: AttentionShape) throws -> FusionGroup {
        try SequenceParallelFusion(comm: comm, method: method, layout: SequenceLayout(kind: layout, ranks: size, length: length), shape: shape)
    }

    func scatter(_ parts: [Float], counts: [Int]) throws -> [Float] {
        // One spare float so that a rank receiving nothing still passes a buffer.
        var mine = [Float](repeating: 0, count: counts[rank] + 1)
        try parts.withUnsafeBufferPointer { input in
            try mine.withUnsafeMutableBufferPointer { try comm.scatter(input.baseAddress, counts: counts, into: $0.baseAddress!) }
        }
        mine.removeLast()
        return mine
    }

    func gather(_ values: [Float], counts: [Int]) throws -> [Float] {
        let total = counts.reduce(0, +)
        var all = [Float](repeating: 0, count: rank == 0 ? total + 1 : 1)
        let input = values.isEmpty ? [0] : values
        try input.withUnsafeBufferPointer { v in
            try all.withUnsafeMutableBufferPointer { try comm.gather(v.baseAddress!, into: $0.baseAddress, counts: counts) }
        }
        guard rank == 0 else { return [] }
        all.removeLast()
        return all
    }
}
