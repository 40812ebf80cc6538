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

/// The training curve of a run: loss (from `metrics.jsonl`) and held-out accuracy per question
/// kind (from `evaluation.jsonl`) against tokens seen, drawn as `curve.svg` in the run's directory.
enum TrainingCurve {
    static func write(out dir: String, tokensPerStep: Int) throws {
        struct LossLine: Decodable { let step: Int, loss: Float }
        let decoder = JSONDecoder()
        decoder.keyDecodingStrategy = .convertFromSnakeCase
        func lines(_ name: String) -> [Data] {
            ((try? String(contentsOfFile: dir + "/" + name, encoding: .utf8)) ?? "").split(separator: "\n").map { Data($0.utf8) }
        }
        let losses = lines("metrics.jsonl").compactMap { try? decoder.decode(LossLine.self, from: $0) }
            .map { (x: Double($0.step * tokensPerStep), y: Double($0.loss)) }
        let evaluations = lines("evaluation.jsonl").compactMap { try? decoder.decode(EvaluationRecord.self, from: $0) }
        // A running mean over 10 steps: single-step losses of small batches are noisy.
        let smoothed = losses.indices.map { i -> (x: Double, y: Double) in
            let window = losses[max(0, i - 9)...i]
            return (losses[i].x, window.map(\.y).reduce(0, +) / Double(window.count))
        }
        func tokens(_ v: Double) -> String { v >= 1e6 ? String(format: "%.1fM", v / 1e6) : String(format: "%.0fK", v / 1e3) }
        var loss = SVGPlot(title: "Training loss (mean of 10 steps)", xLabel: "tokens seen", yLabel: "loss (log scale)", logY: true)
        loss.xTick = tokens
        loss.series = [.init(name: "train loss", color: SVGPlot.palette[0], points: smoothed)]
        var accuracy = SVGPlot(title: "Held-out answer accuracy (full prefill)", xLabel: "tokens seen", yLabel: "accuracy (%)",
                               yRange: 0...100)
        accuracy.xTick = tokens
        accuracy.xRange = loss.series[0].points.isEmpty ? nil : 0...(losses.last?.x ?? 1)
        let kinds = Array(Set(evaluations.flatMap { $0.accuracy.keys })).sorted()
        for (i, kind) in kinds.enumerated() {
            let points = evaluations.compactMap { e in
                e.accuracy[kind].flatMap { $0.total > 0 ? (Double(e.tokens), 100 * Double($0.correct) / Double($0.total)) : nil }
            }
            let n = evaluations.last?.accuracy[kind]?.total ?? 0
            accuracy.series.append(.init(name: "\(kind) (\(n) q)", color: SVGPlot.palette[(i + 1) % SVGPlot.palette.count], points: points))
        }
        try SVGPlot.figure([loss, accuracy]).write(toFile: dir + "/curve.svg", atomically: true, encoding: .utf8)
    }
}
