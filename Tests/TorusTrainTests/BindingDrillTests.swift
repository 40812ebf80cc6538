import Foundation
import Testing
import TorusModel
import TorusTrain

@Suite struct BindingDrillTests {
    static let tokenizer: (any TextTokenizer)? = {
        let path = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
            .deletingLastPathComponent().appendingPathComponent("configs/rag-tokenizer.json").path
        return try? TokenizerJSON.load(path: path, modelVocabulary: 1408)
    }()

    /// The windows of one stage: (tokens, loss flags) of each.
    func windows(_ stages: [BindingDrill.Stage], count: Int, window: Int) throws -> [(tokens: [Int32], loss: [Bool])] {
        let tokenizer = try #require(Self.tokenizer)
        let w = BindingDrill(stages: stages, seed: 9, pairs: 1...3).trainingTokenWindows(count: count, window: window, tokenizer: tokenizer)
        #expect(w.tokens.count == w.questions.count && w.tokens.count % window == 0)
        #expect(w.tokens.count / window >= count * 9 / 10, "\(w.tokens.count / window) of \(count) examples fit \(window) tokens")
        return stride(from: 0, to: w.tokens.count, by: window).map { (Array(w.tokens[$0..<($0 + window)]), Array(w.questions[$0..<($0 + window)])) }
    }

    /// Associative recall: each value that carries loss follows its name, and that name stood
    /// with that very value before the "Q" (and nothing else carries loss).
    @Test func pairsAskTheValueStatedWithTheName() throws {
        let tokenizer = try #require(Self.tokenizer)
        let q = tokenizer.encode("Q")
        #expect(q.count == 1)
        var asked = 0
        for (tokens, loss) in try windows([.pairs], count: 300, window: 20) {
            let at = try #require(tokens.firstIndex(of: q[0]))
            for i in loss.indices where loss[i] {
                #expect(i > at + 1)
                let stated = (0..<(at - 1)).contains { tokens[$0] == tokens[i - 1] && tokens[$0 + 1] == tokens[i] }
                #expect(stated, "\(tokenizer.decode(tokens)): \(tokenizer.decode([tokens[i - 1], tokens[i]])) was not stated")
                asked += 1
            }
        }
        #expect(asked >= 300)
    }

    /// The stages in text: documents state facts, and each answer (the tokens with loss, and
    /// only those) restates one of them in the stage's form; a question names the answer's name.
    @Test(arguments: [BindingDrill.Stage.oneWord, .twoWords, .statements, .questions])
    func answersRestateAStatedFact(stage: BindingDrill.Stage) throws {
        let tokenizer = try #require(Self.tokenizer)
        var kinds = Set<String>()
        for (tokens, loss) in try windows([stage], count: 200, window: 96) {
            let text = tokenizer.decode(tokens)
            let docs = text.split(separator: "\n").filter { $0.hasPrefix("Doc: ") }.map { String($0.dropFirst(5)) }
            #expect((1...3).contains(docs.count), "\(text)")
            // Answers: runs of tokens with loss.
            var answers: [String] = [], run: [Int32] = []
            for (t, l) in zip(tokens, loss) {
                if l { run.append(t) } else if !run.isEmpty { answers.append(tokenizer.decode(run)); run = [] }
            }
            #expect(!answers.isEmpty && answers.count <= docs.count * 3, "\(text)")
            for a in answers {
                let line = a.trimmingCharacters(in: .whitespacesAndNewlines)
                let words = line.dropLast().split(separator: " ")
                let (name, value) = (String(words.first ?? ""), String(words.last ?? ""))
                let doc = docs.first { $0.hasPrefix(name + " ") }
                #expect(doc?.hasSuffix(" \(value).") == true, "answer '\(line)' against \(docs)")
                switch stage {
                case .oneWord: #expect(line == "\(name) \(value)." && doc == "\(name) has \(value).")
                case .twoWords: #expect(line == "\(name) \(value)." && doc == "\(name) keeps a \(value).")
                default: #expect(line == doc, "the answer '\(line)' is not the statement '\(doc ?? "")'")
                }
                if let doc { kinds.insert(String(doc.dropFirst(name.count + 1).split(separator: " ").first ?? "")) }
                if stage == .questions {
                    let lines = text.split(separator: "\n").map(String.init)
                    let asked = lines.indices.dropFirst().contains { lines[$0] == "A: " + line && lines[$0 - 1].hasPrefix("Q: ")
                        && lines[$0 - 1].split(separator: " ").contains { $0.hasPrefix(name) } }
                    #expect(asked, "no question about \(name) before '\(line)': \(text)")
                }
            }
        }
        if stage == .statements || stage == .questions {
            // Every kind of fact the drill states.
            #expect(kinds == ["lives", "works", "likes", "keeps"], "\(kinds)")
        }
    }

    /// With several kinds, a name's document states one fact of each, and each answer is one
    /// of its statements: the value must match the name and the asked kind.
    @Test func severalKindsAMatchNeedsNameAndKind() throws {
        let tokenizer = try #require(Self.tokenizer)
        let drill = BindingDrill(stages: [.questions], seed: 4, pairs: 2...2, kinds: 3...3)
        let w = drill.trainingTokenWindows(count: 50, window: 160, tokenizer: tokenizer)
        #expect(w.tokens.count == 50 * 160)
        for start in stride(from: 0, to: w.tokens.count, by: 160) {
            let text = tokenizer.decode(Array(w.tokens[start..<(start + 160)]))
            let lines = text.split(separator: "\n").map(String.init)
            let docs = lines.filter { $0.hasPrefix("Doc: ") }.map { $0.dropFirst(5).components(separatedBy: ". ").map { $0.hasSuffix(".") ? $0 : $0 + "." } }
            #expect(docs.count == 2 && docs.allSatisfy { $0.count == 3 && Set($0.map { $0.prefix(while: { $0 != " " }) }).count == 1 }, "\(text)")
            let answers = lines.filter { $0.hasPrefix("A: ") }.map { String($0.dropFirst(3)) }
            #expect(answers.count == 2 && answers.allSatisfy { a in docs.contains { $0.contains(a) } }, "\(text)")
        }
    }

    /// With friends, some facts name another person of the pool (never one of the example's
    /// own names), and only in the stages that state the corpus's statements.
    @Test func friendsAreAnotherName() throws {
        let tokenizer = try #require(Self.tokenizer)
        for stage in [BindingDrill.Stage.statements, .twoWords] {
            let w = BindingDrill(stages: [stage], seed: 5, pairs: 2...2, friends: true).trainingTokenWindows(count: 200, window: 64, tokenizer: tokenizer)
            let text = tokenizer.decode(w.tokens)
            let friends = text.split(separator: "\n").filter { $0.hasPrefix("Doc: ") && $0.contains(" is a friend of ") }
            if stage == .twoWords { #expect(friends.isEmpty); continue }
            #expect(friends.count > 40, "\(friends.count) friend facts in 400")
            for f in friends {
                let words = f.dropFirst(5).dropLast().split(separator: " ")
                #expect(words.count == 6 && words[0] != words[5] && RAGCorpus.names.contains(String(words[5])), "\(f)")
            }
        }
    }

    /// Chains: each answer states the asked person's friend link, as one document states it,
    /// then the asked fact (city or job) of that friend, as the friend's document states it.
    @Test func chainsAnswerWithTwoStatedFacts() throws {
        let tokenizer = try #require(Self.tokenizer)
        var asked = 0
        for (tokens, loss) in try windows([.chains], count: 100, window: 160) {
            let text = tokenizer.decode(tokens)
            let lines = text.split(separator: "\n").map(String.init)
            let docs = lines.filter { $0.hasPrefix("Doc: ") }.map { String($0.dropFirst(5)) }
            let answers = lines.filter { $0.hasPrefix("A: ") }
            #expect(!answers.isEmpty && tokenizer.decode(zip(tokens, loss).filter(\.1).map(\.0)).filter { $0 == "\n" }.count == answers.count)
            for (q, a) in zip(lines, lines.dropFirst()) where q.hasPrefix("Q: ") {
                asked += 1
                let words = q.dropLast().split(separator: " ")   // "Q: Where does the friend of Poti live?"
                let person = String(words[(words.firstIndex(of: "of") ?? 0) + 1]), city = q.hasSuffix(" live?")
                #expect(city || q.hasSuffix(" work as?"), "\(q)")
                let parts = a.dropFirst(3).components(separatedBy: ". ")
                try #require(a.hasPrefix("A: ") && parts.count == 2, "\(q) -> \(a)")
                #expect(parts[0].hasPrefix(person + " is a friend of ") && docs.contains(parts[0] + "."),
                        "'\(parts[0])' is not \(person)'s link in \(docs)")
                let friend = String(parts[0].split(separator: " ").last ?? "")
                #expect(parts[1].hasPrefix(friend + (city ? " lives in " : " works as a ")) && docs.contains { $0.hasPrefix(friend + " lives in") && $0.contains(parts[1]) },
                        "'\(parts[1])' is not the asked fact of \(friend)'s document: \(docs)")
            }
        }
        #expect(asked >= 100)
    }

    /// A mixed drill draws each example from one of its stages.
    @Test func mixedStagesDrawBoth() throws {
        let tokenizer = try #require(Self.tokenizer)
        let texts = try windows([.twoWords, .questions], count: 100, window: 80).map { tokenizer.decode($0.tokens) }
        let questions = texts.filter { $0.contains("\nA:") }.count
        #expect((25...75).contains(questions), "\(questions) of 100 with questions")
    }
}
