import Foundation
import TorusModel

/// Exact-match answer accuracy: the model is prompted with documents and question and
/// generates greedily until a newline; the answer counts when it equals the expected one.
public struct QAEvaluation {
    /// Tokens generated for an answer: a RAG answer line is up to ~20 BPE tokens (64 bytes),
    /// a QA answer one word.
    public static func answerTokens(rag: Bool) -> Int { rag ? 64 : 16 }

    public struct Result: Sendable {
        public var total = 0, correct = 0
        public var twoHopTotal = 0, twoHopCorrect = 0
        /// The wrong answers (at most `keepWrong` of them, in order) and what was expected.
        public var wrong: [(answer: String, expected: String)] = []
        /// The first wrong answer and what was expected.
        public var firstWrong: (answer: String, expected: String)? { wrong.first }
        public var accuracy: Double { total == 0 ? 0 : Double(correct) / Double(total) }
        public var twoHopAccuracy: Double { twoHopTotal == 0 ? 0 : Double(twoHopCorrect) / Double(twoHopTotal) }
    }

    public static func evaluate(model: LlamaModel, examples: [QAExample], maxAnswerTokens: Int = 64,
                                tokenizer: any TextTokenizer = ByteTokenizer(), keepWrong: Int = 1) throws -> Result {
        var r = Result()
        let stop = tokenizer.newlineToken
        for e in examples {
            let prompt = tokenizer.encode(e.prompt)
            let out = try model.generate(prompt: prompt, maxNewTokens: maxAnswerTokens, stopToken: stop)
            let text = answerLine(tokenizer.decode(out))
            let ok = text == e.answer
            r.total += 1; r.correct += ok ? 1 : 0
            if !ok && r.wrong.count < keepWrong { r.wrong.append((text, e.answer)) }
            if e.hops == 2 { r.twoHopTotal += 1; r.twoHopCorrect += ok ? 1 : 0 }
        }
        return r
    }

    /// The answer in generated text: its first line without surrounding spaces (a tokenizer
    /// may emit the newline merged with more).
    public static func answerLine(_ text: String) -> String {
        (text.split(separator: "\n", omittingEmptySubsequences: false).first.map(String.init) ?? "").trimmingCharacters(in: .whitespaces)
    }
}
