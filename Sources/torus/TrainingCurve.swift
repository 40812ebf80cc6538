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

/// A metrics-file line of an evaluation: `{"step", "tokens", "accuracy": {kind: {correct, total}}}`.
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

/// The training curve of a run: loss, and held-out accuracy per question kind, against tokens
/// seen, read from its metrics file and drawn as SVG.
enum TrainingCurve {
    static func write(metrics path: String, to out: String, tokensPerStep: Int) throws {
        let text = try String(contentsOfFile: path, encoding: .utf8)
        struct LossLine: Decodable { let step: Int, loss: Float }
        let decoder = JSONDecoder()
        decoder.keyDecodingStrategy = .convertFromSnakeCase
        var losses: [(x: Double, y: Double)] = [], evaluations: [EvaluationRecord] = []
        for line in text.split(separator: "\n") {
            let data = Data(line.utf8)
            if let l = try? decoder.decode(LossLine.self, from: data) {
                losses.append((Double(l.step * tokensPerStep), Double(l.loss)))
            } else if let e = try? decoder.decode(EvaluationRecord.self, from: data) {
                evaluations.append(e)
            }
        }
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
        try SVGPlot.figure([loss, accuracy]).write(toFile: out, atomically: true, encoding: .utf8)
    }
}
