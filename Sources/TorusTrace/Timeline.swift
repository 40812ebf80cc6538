import Foundation

/// What a span of time was spent on.
public enum SpanKind: String, Codable, Sendable {
    /// Arithmetic (kernels, layers).
    case compute
    /// A nonblocking send or receive in flight, from posting to observed completion.
    case send, recv
    /// Blocked waiting for transfers to finish.
    case wait
    /// A collective operation (in flight or blocking).
    case collective
    /// A whole optimizer step on this rank: the window against which idle time is measured.
    case step

    /// Whether the span counts as communication in the overlap report.
    public var isCommunication: Bool { self == .send || self == .recv || self == .collective }
}

/// One recorded interval on one rank.
public struct Span: Codable, Sendable, Equatable {
    public var name: String
    public var kind: SpanKind
    /// Monotonic clock, nanoseconds.
    public var start: UInt64
    public var end: UInt64
    public var bytes: Int
    public var step: Int
    public var rank: Int

    public init(name: String, kind: SpanKind, start: UInt64, end: UInt64, bytes: Int, step: Int, rank: Int) {
        self.name = name; self.kind = kind; self.start = start; self.end = end
        self.bytes = bytes; self.step = step; self.rank = rank
    }
}

/// A per-process recorder of compute and communication spans. Off unless `current` is set
/// (`TORUS_TRACE=DIR` in the CLI), so the cost when off is one nil check per span.
public final class Timeline: @unchecked Sendable {
    nonisolated(unsafe) public static var current: Timeline?

    public let rank: Int
    /// The step number stamped on new spans.
    public var step = 0
    private var spans: [Span] = []
    private let lock = NSLock()

    public init(rank: Int) {
        self.rank = rank
        spans.reserveCapacity(1 << 16)
    }

    /// The monotonic clock in nanoseconds (comparable across processes on one host).
    @inline(__always) public static func now() -> UInt64 { DispatchTime.now().uptimeNanoseconds }

    public func record(_ name: String, kind: SpanKind, start: UInt64, end: UInt64, bytes: Int = 0) {
        lock.lock()
        spans.append(Span(name: name, kind: kind, start: start, end: end, bytes: bytes, step: step, rank: rank))
        lock.unlock()
    }

    /// Runs `body` and records it as a span when a timeline is active.
    @inline(__always)
    public static func measure<T>(_ name: @autoclosure () -> String, kind: SpanKind = .compute, bytes: Int = 0,
                                  _ body: () throws -> T) rethrows -> T {
        guard let t = current else { return try body() }
        let s = now()
        let result = try body()
        t.record(name(), kind: kind, start: s, end: now(), bytes: bytes)
        return result
    }

    /// The spans recorded so far.
    public var recorded: [Span] {
        lock.lock(); defer { lock.unlock() }
        return spans
    }

    /// Writes `rank-N.jsonl` (one span per line) into `directory`.
    public func write(to directory: String) throws {
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        let encoder = JSONEncoder()
        var data = Data()
        for s in recorded { data.append(try encoder.encode(s)); data.append(0x0A) }
        try data.write(to: URL(fileURLWithPath: (directory as NSString).appendingPathComponent("rank-\(rank).jsonl")))
    }
}
