import Foundation
import Testing
import TorusTrace

@Suite struct OverlapReportTests {
    func span(_ kind: SpanKind, _ start: UInt64, _ end: UInt64, rank: Int = 0, step: Int = 1, bytes: Int = 0) -> Span {
        Span(name: kind.rawValue, kind: kind, start: start * 1_000_000, end: end * 1_000_000, bytes: bytes, step: step, rank: rank)
    }

    @Test func exposedIsCommunicationNotCoveredByCompute() {
        // Communication 0-10 ms and 9-14 ms (union 0-14); compute 2-5 and 8-12: exposed 0-2, 5-8, 12-14 = 7 ms.
        let r = OverlapReport(spans: [span(.send, 0, 10, bytes: 100), span(.recv, 9, 14), span(.compute, 2, 5), span(.compute, 8, 12),
                                      span(.wait, 12, 14)])
        let e = try! #require(r.entries.first)
        #expect(abs(e.communication - 0.014) < 1e-9)
        #expect(abs(e.compute - 0.007) < 1e-9)
        #expect(abs(e.exposed - 0.007) < 1e-9)
        #expect(abs(e.overlap - 0.5) < 1e-9)
        #expect(e.bytes == 100)
    }

    /// A send observed complete late (polled at 10 ms) looks 90% hidden by its span; by its
    /// wire time (1 MB at 1 GB/s + 0.1 ms = 1.1 ms) and 2 ms blocked, it was not hidden at all,
    /// and the exposed share of the step is given beside the fraction.
    @Test func theWireTimeExposesATransferPolledLate() {
        let link = OverlapReport.LinkModel(latency: 1e-4, bytesPerSecond: 1e9)
        let r = OverlapReport(spans: [span(.step, 0, 20), span(.send, 0, 10, bytes: 1_000_000), span(.compute, 0, 9),
                                      span(.wait, 9, 10), span(.wait, 12, 13), span(.compute, 13, 20)], link: link)
        let e = try! #require(r.entries.first)
        #expect(abs(e.overlap - 0.9) < 1e-9)
        #expect(abs(e.exposedShare - 0.05) < 1e-9)
        #expect(abs(e.blocked - 0.002) < 1e-9)
        #expect(abs((e.wire ?? 0) - 0.0011) < 1e-9)
        #expect(abs((e.wireExposed ?? 0) - 0.0011) < 1e-9)
        #expect(e.wireOverlap == 0)
        #expect(r.lines()[0].hasSuffix("blocked ms   wire ms  wire overlap"))
        #expect(r.lines().contains { $0.contains("exposed max 1.00 ms (5.0% of the step)") }, "\(r.lines())")
        #expect(OverlapReport(spans: [span(.send, 0, 10, bytes: 1)]).entries.first?.wire == nil)
        // A ring all-reduce over 2 ranks moves 2 (p - 1) / p = 1 times its bytes per rank.
        var allReduce = span(.collective, 0, 10, bytes: 1_000_000)
        allReduce.name = "MPI_Iallreduce(250000 floats)"
        let two = OverlapReport(spans: [allReduce, span(.compute, 0, 10, rank: 1)], link: link)
        #expect(abs((two.entries.first?.wire ?? 0) - 0.0011) < 1e-9)
    }

    @Test func ranksAndStepsAreReportedSeparately() {
        let r = OverlapReport(spans: [span(.send, 0, 4, rank: 0), span(.compute, 0, 4, rank: 0),
                                      span(.send, 0, 4, rank: 1), span(.compute, 2, 3, rank: 1),
                                      span(.collective, 10, 12, rank: 0, step: 2)])
        #expect(r.entries.count == 3)
        #expect(r.entries[0].overlap == 1)
        #expect(abs(r.entries[1].overlap - 0.25) < 1e-9)
        #expect(r.lines().contains { $0.hasPrefix("step 1: overlap min 25.0% median 100.0% max 100.0% across 2 ranks") })
    }

    /// The summary sums each rank's steps: rank 0 has 4 + 2 ms of communication, 2 ms of it
    /// exposed (step 2 has no compute), in 4 + 2 ms of steps.
    @Test func summarySumsEachRanksSteps() {
        let r = OverlapReport(spans: [span(.send, 0, 4, rank: 0, bytes: 2_000_000), span(.compute, 0, 4, rank: 0),
                                      span(.send, 0, 4, rank: 1), span(.compute, 2, 3, rank: 1),
                                      span(.collective, 10, 12, rank: 0, step: 2, bytes: 1_000_000)])
        let lines = r.summaryLines()
        #expect(lines.count == 3)
        #expect(lines[1].hasPrefix("   0     2       6.0         2.0 ( 33.3%)"), "\(lines[1])")
        #expect(lines[1].contains("66.7%") && lines[1].contains("3.00"), "\(lines[1])")
        #expect(lines[2].hasPrefix("   1     1       4.0         3.0 ( 75.0%)"), "\(lines[2])")
    }

    /// Idle is the step's time without compute (a pipeline stage's bubble plus exposed
    /// communication); the step span sets the window when present.
    @Test func idleIsTheStepWithoutCompute() throws {
        let withStep = OverlapReport(spans: [span(.step, 0, 20), span(.compute, 2, 6), span(.compute, 5, 10), span(.recv, 10, 14)])
        let e = try #require(withStep.entries.first)
        #expect(abs(e.stepTime - 0.020) < 1e-9)
        #expect(abs(e.idle - 0.6) < 1e-9)   // compute 2-10 of 20 ms
        let noStep = OverlapReport(spans: [span(.compute, 2, 6), span(.recv, 6, 10)])
        #expect(abs((noStep.entries.first?.idle ?? 0) - 0.5) < 1e-9)
        #expect(withStep.lines().contains { $0.contains("idle min 60.0% median 60.0% max 60.0%") })
    }

    @Test func chromeTraceHasOneProcessPerRank() throws {
        let data = try ChromeTrace.json(spans: [span(.compute, 1, 2, rank: 0), span(.send, 1, 3, rank: 1, bytes: 8)])
        let obj = try #require(try JSONSerialization.jsonObject(with: data) as? [String: Any])
        let events = try #require(obj["traceEvents"] as? [[String: Any]])
        #expect(events.filter { ($0["ph"] as? String) == "X" }.count == 2)
        #expect(events.contains { ($0["name"] as? String) == "process_name" && ($0["pid"] as? Int) == 1 })
    }
}
