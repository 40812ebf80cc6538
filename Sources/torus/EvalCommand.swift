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
    @Option(help: "Question file written by 'torus data synth' (qa: prompt, answer, hops; rag: documents, question, answer, kind): report answer accuracy.") var qa: String?
    @Option(help: "Evaluate at most this many questions.") var qaLimit: Int?
    @Option(help: "Print up to this many wrong answers of each question kind, with the expected ones.") var showWrong: Int = 0
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

    /// Answer accuracy over a question file: `torus data synth` lines of either corpus (QA:
    /// prompt, answer, hops; RAG: documents, question, answer, kind), prompted through the
    /// model directory's tokenizer; RAG questions are also counted by kind.
    func evaluateQuestions(model m: LlamaModel, path: String) throws {
        guard let text = try? String(contentsOfFile: path, encoding: .utf8) else {
            throw ValidationErrorMessage("question file \(path) does not exist or cannot be read")
        }
        var examples: [(qa: QAExample, kind: String?)] = []
        for (i, line) in text.split(separator: "\n").enumerated() where !line.trimmingCharacters(in: .whitespaces).isEmpty {
            let data = Data(line.utf8)
            if let rag = try? JSONDecoder().decode(RAGExample.self, from: data) {
                examples.append((rag.qa, rag.kind))
            } else if let qa = try? JSONDecoder().decode(QAExample.self, from: data) {
                examples.append((qa, nil))
            } else {
                throw ValidationErrorMessage("question file \(path), line \(i + 1): expected {\"prompt\", \"answer\", \"hops\"} "
                    + "or a RAG example {\"documents\", \"question\", \"answer\", \"value\", \"kind\", \"hops\"}")
            }
        }
        if let qaLimit { examples = Array(examples.prefix(qaLimit)) }
        let tokenizer = try ModelTokenizer.load(directory: model, vocabularySize: m.config.vocabSize)
        let answerRoom = QAEvaluation.answerTokens(rag: examples.contains { $0.kind != nil })
        let fitting = examples.filter { tokenizer.encode($0.qa.prompt).count + answerRoom <= m.config.maxPositionEmbeddings }
        let skipped = examples.count - fitting.count
        // One pass per kind (a QA file is one kind), the totals summed.
        var kinds: [String?] = []
        for e in fitting where !kinds.contains(e.kind) { kinds.append(e.kind) }
        var correct = 0, total = 0, twoHopCorrect = 0, twoHopTotal = 0, lines: [String] = []
        for kind in kinds {
            let r = try QAEvaluation.evaluate(model: m, examples: fitting.filter { $0.kind == kind }.map(\.qa), maxAnswerTokens: answerRoom,
                                              tokenizer: tokenizer, keepWrong: max(1, showWrong))
            correct += r.correct; total += r.total; twoHopCorrect += r.twoHopCorrect; twoHopTotal += r.twoHopTotal
            if let kind { lines.append(String(format: "eval: RAG (%@) answer accuracy %.1f%% (%d/%d)", kind, 100 * r.accuracy, r.correct, r.total)) }
            for w in r.wrong.prefix(showWrong) { lines.append("eval:   \(kind ?? "qa") wrong: \(w.answer.debugDescription) expected \(w.expected.debugDescription)") }
        }
        func percent(_ a: Int, _ b: Int) -> Double { b == 0 ? 0 : 100 * Double(a) / Double(b) }
        print(String(format: "eval: answer accuracy %.1f%% (%d/%d), two-hop %.1f%% (%d/%d)%@", percent(correct, total), correct, total,
                     percent(twoHopCorrect, twoHopTotal), twoHopCorrect, twoHopTotal,
                     skipped > 0 ? " (\(skipped) questions longer than the context skipped)" : ""))
        lines.forEach { print($0) }
    }
}
