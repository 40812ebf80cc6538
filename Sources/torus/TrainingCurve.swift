import Foundation

/// Held-out answer accuracy of one question kind ("single", "friend", "previous"; "all" and
/// "two-hop" for the QA corpus), with the line printed for it.
struct AccuracyScore: Sendable {
    var name: String
    var correct: Int
    var total: Int
    var line: String
    var accuracy: Double { total == 0 ? 0 : Double(correct) / Double(total) }
}

/// An `evaluation.jsonl` line: `{"step", "tokens", "accuracy": {kind: {correct, total}}}`.
struct EvaluationRecord: Codable {
    struct Count: Codable { var correct: Int, total: Int }
    var step: Int
    var tokens: Int
    var accuracy: [String: Count]

    init(step: Int, tokens: Int, scores: [AccuracyScore]) {
        self.step = step
        self.tokens = tokens
        accuracy = Dictionary(scores.map { ($0.name, Count(correct: $0.correct, total: $0.total)) }, uniquingKeysWith: { a, _ in a })
    }
}

/// The training curve of a run, or of runs one after another (the stages of a curriculum):
/// loss (from `metrics.jsonl`) and held-out accuracy per question kind (from
/// `evaluation.jsonl`) against tokens seen, drawn as an SVG file.
enum TrainingCurve {
    /// One run's `curve.svg`; `tokensPerStep` counts steps of metrics written before steps
    /// carried their token counts.
    static func write(out dir: String, tokensPerStep: Int) throws {
        try write(runs: [dir], to: dir + "/curve.svg", tokensPerStep: tokensPerStep)
    }

    /// The runs in order, each one's tokens counted after the runs before it; with several runs
    /// each run's loss and accuracies are lines of their own, named by its directory.
    static func write(runs: [String], to file: String, tokensPerStep: Int? = nil) throws {
        struct LossLine: Decodable { let step: Int, loss: Float, tokens: Int? }
        let decoder = JSONDecoder()
        decoder.keyDecodingStrategy = .convertFromSnakeCase
        func lines(_ dir: String, _ name: String) -> [Data] {
            ((try? String(contentsOfFile: dir + "/" + name, encoding: .utf8)) ?? "").split(separator: "\n").map { Data($0.utf8) }
        }
        func tokens(_ v: Double) -> String { v >= 1e6 ? String(format: "%.1fM", v / 1e6) : String(format: "%.0fK", v / 1e3) }
        var loss = SVGPlot(title: "Training loss (mean of 10 steps)", xLabel: "tokens seen", yLabel: "loss (log scale)", logY: true)
        loss.xTick = tokens
        var accuracy = SVGPlot(title: "Held-out answer accuracy (full prefill)", xLabel: "tokens seen", yLabel: "accuracy (%)",
                               yRange: 0...100)
        accuracy.xTick = tokens
        var seen = 0.0
        var points: [String: [(x: Double, y: Double)]] = [:], totals: [String: Int] = [:]
        for (r, dir) in runs.enumerated() {
            let steps = lines(dir, "metrics.jsonl").compactMap { try? decoder.decode(LossLine.self, from: $0) }
            guard !steps.isEmpty else { throw ValidationErrorMessage("\(dir)/metrics.jsonl holds no training steps") }
            // Tokens seen after each step (and before step 1).
            var after: [Int: Double] = [0: seen]
            var losses: [(x: Double, y: Double)] = []
            for s in steps {
                guard let n = s.tokens ?? tokensPerStep else {
                    throw ValidationErrorMessage("\(dir)/metrics.jsonl: step \(s.step) has no token count (written by an older torus)")
                }
                seen += Double(n)
                after[s.step] = seen
                losses.append((seen, Double(s.loss)))
            }
            // A running mean over 10 steps: single-step losses of small batches are noisy.
            let smoothed = losses.indices.map { i -> (x: Double, y: Double) in
                let window = losses[max(0, i - 9)...i]
                return (losses[i].x, window.map(\.y).reduce(0, +) / Double(window.count))
            }
            let name = runs.count == 1 ? "train loss" : URL(fileURLWithPath: dir).lastPathComponent
            loss.series.append(.init(name: name, color: SVGPlot.palette[r % SVGPlot.palette.count], points: smoothed))
            for e in lines(dir, "evaluation.jsonl").compactMap({ try? decoder.decode(EvaluationRecord.self, from: $0) }) {
                guard let x = after[e.step] else { continue }
                for (kind, count) in e.accuracy where count.total > 0 {
                    // Runs evaluate on their own prompts (a curriculum's phases differ): one line per run.
                    let key = runs.count == 1 ? kind : "\(kind), \(name)"
                    points[key, default: []].append((x, 100 * Double(count.correct) / Double(count.total)))
                    totals[key] = count.total
                }
            }
        }
        accuracy.xRange = seen > 0 ? 0...seen : nil
        for (i, kind) in points.keys.sorted().enumerated() {
            accuracy.series.append(.init(name: "\(kind) (\(totals[kind] ?? 0) q)", color: SVGPlot.palette[(i + 1) % SVGPlot.palette.count],
                                         points: points[kind] ?? []))
        }
        try SVGPlot.figure([loss, accuracy]).write(toFile: file, atomically: true, encoding: .utf8)
    }
}
