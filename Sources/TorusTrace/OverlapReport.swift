import Foundation

/// Communication hidden behind compute, from recorded spans (DESIGN.md): per rank and step,
/// T_comm is the union of communication spans, T_comp the union of compute spans, T_exposed
/// the part of T_comm not covered by T_comp, and overlap = 1 - T_exposed / T_comm. Idle is the
/// part of the step (its `.step` span, else its first to last span) without compute: on a
/// pipeline stage, its bubble plus exposed communication.
///
/// A transfer's span lasts until a poll observes its completion, so a method that polls late
/// looks better hidden than it is. With a `LinkModel` (the measured latency and bandwidth of
/// `torus bench link`) the report also gives each rank's wire time (what its sends cost on the
/// link), its blocked time (wait spans), and the exposed communication estimated from them:
/// blocked time up to the wire time; blocked time beyond it is waiting for a peer's compute.
public struct OverlapReport: Sendable {
    /// A link's measured one-way latency (seconds) and bandwidth (bytes per second).
    public struct LinkModel: Sendable {
        public var latency: Double
        public var bytesPerSecond: Double
        public init(latency: Double, bytesPerSecond: Double) { self.latency = latency; self.bytesPerSecond = bytesPerSecond }
        /// Seconds a message of `bytes` occupies the link.
        public func wireTime(bytes: Int) -> Double { latency + Double(bytes) / bytesPerSecond }
    }

    public struct Entry: Sendable {
        public var rank: Int
        public var step: Int
        public var communication: Double
        public var compute: Double
        public var exposed: Double
        public var bytes: Int
        /// Length of the step on this rank, seconds.
        public var stepTime: Double
        /// Seconds blocked in waits for transfers (union of wait spans).
        public var blocked: Double = 0
        /// Seconds this rank's sends and collectives occupy the link by the link model (nil
        /// without one).
        public var wire: Double?
        /// Exposed share of the step.
        public var exposedShare: Double { stepTime > 0 ? exposed / stepTime : 0 }
        /// Exposed communication at most, from the wire time: blocked time up to the wire time
        /// (blocked time may also be waiting for a peer's compute).
        public var wireExposed: Double? { wire.map { min(blocked, $0) } }
        /// Overlap against the wire time, at least: 1 - wireExposed / wire.
        public var wireOverlap: Double? {
            guard let w = wire, let x = wireExposed else { return nil }
            return w > 0 ? 1 - x / w : 1
        }
        public var overlap: Double { communication > 0 ? 1 - exposed / communication : 1 }
        /// Share of the step this rank computed nothing.
        public var idle: Double { stepTime > 0 ? max(0, 1 - compute / stepTime) : 0 }
    }

    public let entries: [Entry]

    public init(spans: [Span], link: LinkModel? = nil) {
        let ranks = Set(spans.map(\.rank)).count
        var groups: [[Int]: [Span]] = [:]
        for s in spans { groups[[s.rank, s.step], default: []].append(s) }
        entries = groups.keys.sorted { ($0[1], $0[0]) < ($1[1], $1[0]) }.map { key in
            let list = groups[key] ?? []
            let comm = Self.union(list.filter { $0.kind.isCommunication })
            let comp = Self.union(list.filter { $0.kind == .compute })
            let window = list.first { $0.kind == .step }.map { Double($0.end - $0.start) / 1e9 }
                ?? Double((list.map(\.end).max() ?? 0) - (list.map(\.start).min() ?? 0)) / 1e9
            return Entry(rank: key[0], step: key[1], communication: Self.length(comm), compute: Self.length(comp),
                         exposed: Self.length(Self.subtract(comm, comp)),
                         bytes: list.filter { $0.kind == .send || $0.kind == .collective }.reduce(0) { $0 + $1.bytes },
                         stepTime: window, blocked: Self.length(Self.union(list.filter { $0.kind == .wait })),
                         wire: link.map { l in list.reduce(0) { $0 + Self.wireTime($1, link: l, ranks: ranks) } })
        }
    }

    /// What a span's transfer costs on the link: a send its bytes; a collective over `ranks`
    /// ranks what a ring algorithm moves per rank (all-reduce 2 (p - 1) / p of its bytes,
    /// reduce-scatter and all-gather (p - 1) / p); other spans nothing.
    static func wireTime(_ s: Span, link: LinkModel, ranks: Int) -> Double {
        switch s.kind {
        case .send: return link.wireTime(bytes: s.bytes)
        case .collective:
            guard ranks > 1 else { return 0 }
            let share = Double(ranks - 1) / Double(ranks) * (s.name.contains("llreduce") ? 2 : 1)
            return link.wireTime(bytes: Int(Double(s.bytes) * share))
        default: return 0
        }
    }

    typealias Interval = (start: UInt64, end: UInt64)

    static func union(_ spans: [Span]) -> [Interval] {
        let sorted = spans.map { (start: $0.start, end: max($0.start, $0.end)) }.sorted { $0.start < $1.start }
        var out: [Interval] = []
        for s in sorted {
            if let last = out.last, s.start <= last.end { out[out.count - 1].end = max(last.end, s.end) } else { out.append(s) }
        }
        return out
    }

    /// Parts of `a` not covered by `b` (both unions: sorted, disjoint).
    static func subtract(_ a: [Interval], _ b: [Interval]) -> [Interval] {
        var out: [Interval] = []
        var j = 0
        for var iv in a {
            while j < b.count && b[j].end <= iv.start { j += 1 }
            var k = j
            while k < b.count && b[k].start < iv.end {
                if b[k].start > iv.start { out.append((iv.start, b[k].start)) }
                iv.start = max(iv.start, b[k].end)
                if iv.start >= iv.end { break }
                k += 1
            }
            if iv.start < iv.end { out.append(iv) }
        }
        return out
    }

    static func length(_ ivs: [Interval]) -> Double { ivs.reduce(0) { $0 + Double($1.end - $1.start) } / 1e9 }

    /// Report lines: per rank and step, then min / median / max of the overlap across ranks.
    /// Exposed time is also given as a share of the step; with a link model, the blocked time,
    /// the wire time of the sends and the overlap against it follow.
    public func lines() -> [String] {
        let wired = entries.contains { $0.wire != nil }
        var out = ["rank step   comm ms  exposed ms (of step)  compute ms  overlap   sent MB   step ms   idle"
                   + (wired ? "  blocked ms   wire ms  wire overlap" : "")]
        for e in entries {
            var line = String(format: "%4d %4d %9.2f %11.2f (%5.1f%%) %11.2f %7.1f%% %9.2f %9.2f %5.1f%%", e.rank, e.step, e.communication * 1e3,
                              e.exposed * 1e3, 100 * e.exposedShare, e.compute * 1e3, 100 * e.overlap, Double(e.bytes) / 1e6,
                              e.stepTime * 1e3, 100 * e.idle)
            if let wire = e.wire, let o = e.wireOverlap {
                line += String(format: " %11.2f %9.2f %12.1f%%", e.blocked * 1e3, wire * 1e3, 100 * o)
            }
            out.append(line)
        }
        let steps = Set(entries.map(\.step)).sorted()
        for step in steps {
            let o = entries.filter { $0.step == step && $0.communication > 0 }.map(\.overlap).sorted()
            guard !o.isEmpty else { continue }
            let exposed = entries.filter { $0.step == step }.map(\.exposed)
            let shares = entries.filter { $0.step == step }.map(\.exposedShare)
            let idle = entries.filter { $0.step == step }.map(\.idle).sorted()
            out.append(String(format: "step %d: overlap min %.1f%% median %.1f%% max %.1f%% across %d ranks; exposed max %.2f ms (%.1f%% of the step); idle min %.1f%% median %.1f%% max %.1f%%",
                              step, 100 * o[0], 100 * o[o.count / 2], 100 * o[o.count - 1], o.count, (exposed.max() ?? 0) * 1e3,
                              100 * (shares.max() ?? 0), 100 * idle[0], 100 * idle[idle.count / 2], 100 * idle[idle.count - 1]))
        }
        return out
    }

    /// One line per rank summed over all its steps: communication, the part exposed (also as a
    /// share of the steps' time), compute, overlap, bytes sent and idle time; with a link model
    /// also the blocked time, the sends' wire time and the overlap against it.
    public func summaryLines() -> [String] {
        let wired = entries.contains { $0.wire != nil }
        var out = ["rank steps   comm ms  exposed ms (of steps)  compute ms  overlap   sent MB   steps ms   idle"
                   + (wired ? "  blocked ms   wire ms  wire overlap" : "")]
        for rank in Set(entries.map(\.rank)).sorted() {
            let mine = entries.filter { $0.rank == rank }
            let comm = mine.reduce(0) { $0 + $1.communication }, exposed = mine.reduce(0) { $0 + $1.exposed }
            let compute = mine.reduce(0) { $0 + $1.compute }, time = mine.reduce(0) { $0 + $1.stepTime }
            let bytes = mine.reduce(0) { $0 + $1.bytes }
            var line = String(format: "%4d %5d %9.1f %11.1f (%5.1f%%) %11.1f %7.1f%% %9.2f %10.1f %5.1f%%", rank, mine.count, comm * 1e3,
                              exposed * 1e3, time > 0 ? 100 * exposed / time : 0, compute * 1e3, comm > 0 ? 100 * (1 - exposed / comm) : 100,
                              Double(bytes) / 1e6, time * 1e3, time > 0 ? 100 * max(0, 1 - compute / time) : 0)
            if wired {
                let blocked = mine.reduce(0) { $0 + $1.blocked }, wire = mine.reduce(0) { $0 + ($1.wire ?? 0) }
                let wireExposed = mine.reduce(0) { $0 + ($1.wireExposed ?? 0) }
                line += String(format: " %11.1f %9.1f %12.1f%%", blocked * 1e3, wire * 1e3, wire > 0 ? 100 * (1 - wireExposed / wire) : 100)
            }
            out.append(line)
        }
        return out
    }
}

/// Chrome trace event format (chrome://tracing, Perfetto): one process per rank, lanes for
/// compute, communication and waits.
public enum ChromeTrace {
    public static func json(spans: [Span]) throws -> Data {
        let origin = spans.map(\.start).min() ?? 0
        var events: [[String: Any]] = []
        for rank in Set(spans.map(\.rank)).sorted() {
            events.append(["name": "process_name", "ph": "M", "pid": rank, "args": ["name": "rank \(rank)"]])
            for (tid, lane) in ["compute", "communication", "wait", "step"].enumerated() {
                events.append(["name": "thread_name", "ph": "M", "pid": rank, "tid": tid, "args": ["name": lane]])
            }
        }
        for s in spans {
            let tid = s.kind == .compute ? 0 : s.kind == .wait ? 2 : s.kind == .step ? 3 : 1
            events.append(["name": s.name, "cat": s.kind.rawValue, "ph": "X", "pid": s.rank, "tid": tid,
                           "ts": Double(s.start - origin) / 1e3, "dur": Double(max(s.end, s.start) - s.start) / 1e3,
                           "args": ["bytes": s.bytes, "step": s.step]])
        }
        return try JSONSerialization.data(withJSONObject: ["traceEvents": events, "displayTimeUnit": "ms"])
    }
}
