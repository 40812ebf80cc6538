import ArgumentParser
import Foundation
import TorusTrace

/// Merges the per-rank timelines written with `TORUS_TRACE=DIR` into one Chrome trace and
/// prints how much communication compute hid.
struct TraceCommand: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "trace",
        abstract: "Merge per-rank timelines (TORUS_TRACE=DIR) into Chrome trace JSON and print the overlap report.")

    @Option(help: "Directory with rank-N.jsonl files.") var dir: String
    @Option(help: "Chrome trace output (default: DIR/trace.json); open in Perfetto or chrome://tracing.") var out: String?
    @Option(help: "Only report steps at or after this one (skips warm-up).") var fromStep: Int = 0
    @Option(help: "Only report steps whose step span's name contains this (for example 'prefill' for a server's prefills).")
    var stepsNamed: String?
    @Flag(help: "One line per rank summed over the steps, instead of one per rank and step.") var summary = false
    @Option(help: "Link bandwidth in Gbit/s (as `torus bench link` measures it): adds blocked time, the sends' wire time and the overlap against it.")
    var linkGbps: Double?
    @Option(help: "Link one-way latency in microseconds, with --link-gbps.") var linkLatencyUs: Double = 0

    func run() throws {
        let files = (try? FileManager.default.contentsOfDirectory(atPath: dir))?.filter { $0.hasPrefix("rank-") && $0.hasSuffix(".jsonl") } ?? []
        guard !files.isEmpty else { throw ValidationErrorMessage("no rank-N.jsonl timelines in \(dir); run with TORUS_TRACE=\(dir)") }
        var spans: [Span] = []
        let decoder = JSONDecoder()
        for f in files.sorted() {
            let path = (dir as NSString).appendingPathComponent(f)
            guard let text = try? String(contentsOfFile: path, encoding: .utf8) else { throw ValidationErrorMessage("cannot read \(path)") }
            for (i, line) in text.split(separator: "\n").enumerated() {
                do { spans.append(try decoder.decode(Span.self, from: Data(line.utf8))) } catch {
                    throw ValidationErrorMessage("\(path), line \(i + 1): not a timeline span")
                }
            }
        }
        let target = out ?? (dir as NSString).appendingPathComponent("trace.json")
        try ChromeTrace.json(spans: spans).write(to: URL(fileURLWithPath: target))
        print("trace: \(spans.count) spans from \(files.count) rank(s) -> \(target)")
        var kept = spans.filter { $0.step >= fromStep }
        if let stepsNamed {
            let steps = Set(kept.filter { $0.kind == .step && $0.name.contains(stepsNamed) }.map(\.step))
            kept = kept.filter { steps.contains($0.step) }
            guard !kept.isEmpty else { throw ValidationErrorMessage("no step span in \(dir) is named like '\(stepsNamed)'") }
            print("steps named like '\(stepsNamed)': \(steps.count)")
        }
        if let g = linkGbps, !(g > 0) { throw ValidationErrorMessage("--link-gbps must be positive, not \(g)") }
        let link = linkGbps.map { OverlapReport.LinkModel(latency: linkLatencyUs / 1e6, bytesPerSecond: $0 * 1e9 / 8) }
        let report = OverlapReport(spans: kept, link: link)
        for line in summary ? report.summaryLines() : report.lines() { print(line) }
    }
}
