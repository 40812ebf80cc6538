import ArgumentParser
import Foundation
import TorusComm
import TorusParallel
import TorusTensor
import TorusTrace

/// Sequence-parallel attention timing on the ranks of this job.
struct BenchAttention: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "attention",
        abstract: "Time Ring Attention and TokenRing (forward, forward+backward), bytes sent and time blocked on transfers per rank.")

    @Option(help: "Comma-separated methods.") var methods: String = "ring,tokenring"
    @Option(help: "zigzag or contiguous.") var layout: String = "zigzag"
    @Option(help: "Sequence length (tokens, whole sequence).") var seq: Int = 8192
    @Option(help: "Query heads.") var heads: Int = 8
    @Option(help: "Key/value heads.") var kvHeads: Int = 8
    @Option(help: "Dimensions per head.") var headDim: Int = 64
    @Option(help: "Timed repetitions after one warm-up.") var steps: Int = 2
    @Flag(help: "Non-causal attention.") var full = false
    @Option(help: "Drive MPI progress from a background thread polling every N microseconds (0: off, transfers move only at the polls between blocks).") var progressUs: Int = 0

    func run() throws {
        BLASCoreCheck.warnOnce()
        let world = try MPIRuntime.world()
        guard let kind = SequenceLayoutKind(rawValue: layout) else { throw SequenceParallelError.unknownLayout(layout) }
        let chosen = try methods.split(separator: ",").map { try SequenceParallelMethod(name: String($0)) }
        let sl = try SequenceLayout(kind: kind, ranks: world.size, length: seq)
        let shape = AttentionShape(queryHeads: heads, keyValueHeads: kvHeads, headDim: headDim)
        let n = sl.localCount
        var g = SeededGenerator(seed: UInt64(world.rank + 1))
        func random(_ w: Int) -> Tensor { let t = Tensor(zeros: [n, w]); t.fillNormal(std: 1, generator: &g); return t }
        let q = random(shape.queryWidth), k = random(shape.keyValueWidth), v = random(shape.keyValueWidth)
        let dOut = random(shape.queryWidth)
        if world.rank == 0 {
            print("progress thread: \(progressUs > 0 ? "every \(progressUs) us" : "off")")
            print("ranks \(world.size), sequence \(seq) (\(n) per rank, \(layout)), heads \(heads)/\(kvHeads) x \(headDim), \(full ? "full" : "causal"), BLAS threads \(BLAS.threads)")
        }
        // The overlap figures come from the timeline; record one if TORUS_TRACE did not.
        if Timeline.current == nil { Timeline.current = Timeline(rank: world.rank) }
        guard let timeline = Timeline.current else { return }
        defer {
            // Peak resident memory of each rank (Linux reports ru_maxrss in KiB).
            var usage = rusage()
            getrusage(RUSAGE_SELF.rawValue, &usage)
            let all = Tensor(zeros: [world.size])
            if let gathered = try? { () throws -> [Float] in
                try world.allGather(Tensor(shape: [1], values: [Float(usage.ru_maxrss) / 1024]), into: all)
                return all.array
            }(), world.rank == 0 {
                print("peak resident memory per rank (MiB): " + gathered.map { String(format: "%.0f", $0) }.joined(separator: ", "))
            }
        }
        let link = try RingLinkProbe.measure(world)
        if world.rank == 0 {
            print(String(format: "link (ring neighbours, measured): latency %.1f us, %.2f Gbit/s per rank each way",
                         link.latency * 1e6, link.bytesPerSecond * 8 / 1e9))
        }
        let progress = progressUs > 0 ? ProgressThread(comm: world, intervalMicroseconds: progressUs) : nil
        progress?.start()
        defer { progress?.stop() }
        for (index, method) in chosen.enumerated() {
            let attention = try method.make(comm: world, layout: sl, shape: shape, causal: !full)
            guard let group = attention as? SequenceParallelGroup else { continue }
            var fwd: [Double] = [], both: [Double] = [], waits: [Double] = [], bytes: [Double] = [], meanBytes: [Double] = []
            for i in 0...steps {
                try world.barrier()
                timeline.step = (index + 1) * 1000 + i
                group.resetStatistics()
                let t0 = DispatchTime.now().uptimeNanoseconds
                let (out, lse) = try attention.forward(q: q, k: k, v: v)
                let t1 = DispatchTime.now().uptimeNanoseconds
                _ = try attention.backward(q: q, k: k, v: v, out: out, lse: lse, dOut: dOut)
                let t2 = DispatchTime.now().uptimeNanoseconds
                // The slowest rank decides the step.
                let worst = try world.allReduce([Double(t1 - t0) / 1e9, Double(t2 - t0) / 1e9, group.waitSeconds, Double(group.bytesSent)], op: .max)
                let total = try world.allReduce([Double(group.bytesSent)], op: .sum)[0]
                if i > 0 { fwd.append(worst[0]); both.append(worst[1]); waits.append(worst[2]); bytes.append(worst[3]); meanBytes.append(total / Double(world.size)) }
            }
            // This rank's timed steps: communication, exposed part and overlap from its spans.
            let mine = OverlapReport(spans: timeline.recorded.filter { $0.step > (index + 1) * 1000 && $0.step < (index + 2) * 1000 },
                                     link: link).entries
            func mean(_ f: (OverlapReport.Entry) -> Double) -> Double { mine.map(f).reduce(0, +) / Double(max(mine.count, 1)) }
            let comm = mean(\.communication), exposed = mean(\.exposed), stepTime = mean(\.stepTime)
            let wire = mean { $0.wire ?? 0 }, blocked = mean(\.blocked), wireExposed = mean { $0.wireExposed ?? 0 }
            let fields = 7
            let local = Tensor(shape: [fields], values: [comm, exposed, comm > 0 ? 1 - exposed / comm : 1, stepTime, wire, blocked, wireExposed].map { Float($0) })
            let all = Tensor(zeros: [fields * world.size])
            try world.allGather(local, into: all)
            if world.rank == 0 {
                func median(_ x: [Double]) -> Double { x.sorted()[x.count / 2] }
                let b = median(both), w = median(waits)
                func field(_ f: Int) -> [Double] { (0..<world.size).map { Double(all[fields * $0 + f]) } }
                let overlaps = field(2).sorted(), comms = field(0), exps = field(1)
                let steps = field(3), wires = field(4), blocks = field(5), wireExps = field(6)
                let shares = (0..<world.size).map { steps[$0] > 0 ? exps[$0] / steps[$0] : 0 }
                let wireOverlaps = (0..<world.size).map { wires[$0] > 0 ? 1 - wireExps[$0] / wires[$0] : 1 }.sorted()
                print(String(format: "%-9@ forward %8.1f ms  forward+backward %8.1f ms  sent %6.1f MB/rank max, %6.1f mean  blocked %7.1f ms (%4.1f%%)",
                             method.rawValue, median(fwd) * 1e3, b * 1e3, median(bytes) / 1e6, median(meanBytes) / 1e6, w * 1e3, 100 * w / b))
                print(String(format: "          timeline: communication %.1f ms/rank (max), exposed %.1f ms (max), overlap min %.1f%% median %.1f%% max %.1f%%",
                             (comms.max() ?? 0) * 1e3, (exps.max() ?? 0) * 1e3, 100 * overlaps[0], 100 * overlaps[overlaps.count / 2],
                             100 * overlaps[overlaps.count - 1]))
                print(String(format: "          exposed %.1f%% of the step (max); wire time of the sends %.1f ms/rank (max, bytes / measured link); blocked %.1f ms (max, %.1f%% of the step); "
                             + "exposed communication at most %.1f ms (max; blocked time up to the wire time); overlap against the wire time at least: min %.1f%% median %.1f%% max %.1f%%",
                             100 * (shares.max() ?? 0), (wires.max() ?? 0) * 1e3, (blocks.max() ?? 0) * 1e3,
                             100 * ((0..<world.size).map { steps[$0] > 0 ? blocks[$0] / steps[$0] : 0 }.max() ?? 0), (wireExps.max() ?? 0) * 1e3,
                             100 * wireOverlaps[0], 100 * wireOverlaps[wireOverlaps.count / 2], 100 * wireOverlaps[wireOverlaps.count - 1]))
            }
        }
    }
}
