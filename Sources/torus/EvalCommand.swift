import ArgumentParser
import Foundation
import TorusModel
import TorusTrain

struct EvalCommand: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "eval",
        abstract: "Mean loss and perplexity of a model over a text or token file.")

    @Option(help: "Hugging Face model directory.") var model: String
    @Option(help: "Text file (byte tokens) or Torus token file.") var data: String
    @Option(help: "Tokens per evaluated window (default: min(max_position_embeddings, 256)).") var seqLen: Int?
    @Option(help: "Windows per forward pass.") var batch: Int = 4
    @Option(help: "Question file (JSON lines with prompt, answer, hops, as written by 'torus data synth'): report answer accuracy.") var qa: String?
    @Option(help: "Evaluate at most this many questions.") var qaLimit: Int?
    @Option(help: "Dense layers in float32 or bfloat16 (as torus serve --dtype).") var dtype: String = "float32"

    func run() throws {
        let m = try HFCheckpoint.load(directory: model)
        m.setInferencePrecision(try InferencePrecision(option: dtype))
        let tokens = try readTokens(path: data, vocab: m.config.vocabSize)
        let t = seqLen ?? min(m.config.maxPositionEmbeddings, 256)
        guard t >= 1, t <= m.config.maxPositionEmbeddings else {
            throw ValidationError("--seq-len must be in 1...\(m.config.maxPositionEmbeddings)")
        }
        guard tokens.count >= 2 else { throw ValidationErrorMessage("\(data) holds \(tokens.count) tokens; at least 2 are needed") }
        guard batch >= 1 else { throw ValidationError("--batch must be positive") }
        let began = Date()
        let r = try m.windowedLoss(tokens: tokens, seqLen: t, batch: batch) { done, total, running in
            if total > 20 && done % max(1, total / 10) < batch {
                warn(String(format: "eval: %d/%d windows, running loss %.4f", done, total, running))
            }
        }
        let elapsed = Date().timeIntervalSince(began)
        print(String(format: "eval: %d tokens in %d windows of %d, mean loss %.4f, perplexity %.3f (%.0f tokens/s)",
                     r.tokens, r.windows, t, r.meanLoss, exp(r.meanLoss), Double(r.tokens) / max(elapsed, 1e-9)))
        if let qa { try evaluateQuestions(model: m, path: qa) }
    }

    func evaluateQuestions(model m: LlamaModel, path: String) throws {
        guard let text = try? String(contentsOfFile: path, encoding: .utf8) else {
            throw ValidationErrorMessage("question file \(path) does not exist or cannot be read")
        }
        var examples: [QAExample] = []
        for (i, line) in text.split(separator: "\n").enumerated() where !line.trimmingCharacters(in: .whitespaces).isEmpty {
            do { examples.append(try JSONDecoder().decode(QAExample.self, from: Data(line.utf8))) } catch {
                throw ValidationErrorMessage("question file \(path), line \(i + 1): expected {\"prompt\", \"answer\", \"hops\"}")
            }
        }
        if let qaLimit { examples = Array(examples.prefix(qaLimit)) }
        let fitting = examples.filter { $0.prompt.utf8.count + 16 <= m.config.maxPositionEmbeddings }
        let r = try QAEvaluation.evaluate(model: m, examples: fitting)
        print(String(format: "eval: answer accuracy %.1f%% (%d/%d), two-hop %.1f%% (%d/%d)%@", 100 * r.accuracy, r.correct, r.total,
                     100 * r.twoHopAccuracy, r.twoHopCorrect, r.twoHopTotal,
                     fitting.count < examples.count ? " (\(examples.count - fitting.count) questions longer than the context skipped)" : ""))
    }
}
