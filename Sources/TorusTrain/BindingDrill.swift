import TorusModel
import TorusTensor

/// Short drills in the RAG corpus's names and values that teach a small model to bind a value
/// to the name it stands beside, the step every RAG question stands on. A model trained on the
/// corpus alone copies a value of the asked kind from the wrong document; trained on these
/// stages in order (each from the weights of the one before), it reads the value of the asked
/// name (issue #11's notes and `bench/binding-probe.py`: each stage skipped stays at chance).
///
/// An example states facts of `pairs` distinct names (of `kinds` kinds each, one document a
/// name), values drawn with replacement (so no answer follows by elimination), then asks about
/// as many of them, drawn with replacement. Loss falls on the answers only.
public struct BindingDrill: Sendable {
    public enum Stage: String, CaseIterable, Sendable {
        /// Associative recall: " Poti goat. Kemi Galto.Q Poti goat Kemi Galto", loss on the values.
        case pairs
        /// "Doc: Poti has goat.\n" (one word between name and value), asked "Q: Poti goat.\n".
        case oneWord = "one_word"
        /// "Doc: Poti keeps a goat.\n" (two words between), asked "Q: Poti goat.\n".
        case twoWords = "two_words"
        /// The corpus's statements (two to four words between name and value), asked
        /// "Q: Poti keeps a goat.\n".
        case statements
        /// The corpus's statements and questions: "Doc: Poti keeps a goat.\n" asked
        /// "Q: What pet does Poti keep?\nA: Poti keeps a goat.\n".
        case questions
        /// Two lookups in a row, as the corpus's friend questions: "Doc: Poti is a friend of
        /// Kemi.\n", "Doc: Kemi lives in Tarsa. Kemi works as a baker.\n" (and the same for other
        /// names, shuffled), asked "Q: Where does the friend of Poti live?\nA: Poti is a friend
        /// of Kemi. Kemi lives in Tarsa.\n".
        case chains
    }

    /// The stages drawn from, one per example, uniformly (an earlier stage mixed in keeps its
    /// binding alive while the model learns the new form).
    public let stages: [Stage]
    public let seed: UInt64
    /// Names per example.
    public let pairs: ClosedRange<Int>
    /// Kinds of fact stated for every name (statements and questions only; the other stages
    /// state one): with more than one, a question's value must match both name and kind, as in
    /// the corpus's documents.
    public let kinds: ClosedRange<Int>

    /// Whether friends are among the kinds (statements and questions only).
    public let friends: Bool

    public init(stages: [Stage], seed: UInt64, pairs: ClosedRange<Int> = 1...2, kinds: ClosedRange<Int> = 1...1, friends: Bool = false) {
        precondition(kinds.lowerBound >= 1 && kinds.upperBound <= Self.kinds.count, "1 to \(Self.kinds.count) kinds")
        self.kinds = kinds
        self.friends = friends
        precondition(!stages.isEmpty, "a drill needs a stage")
        self.stages = stages
        self.seed = seed
        self.pairs = pairs
    }

    /// The kinds of fact: a question, the corpus's statement, and the values.
    static let kinds: [(question: String, statement: String, values: [String])] = [
        ("Where does {n} live?", "{n} lives in {v}.", RAGCorpus.cities),
        ("What does {n} work as?", "{n} works as a {v}.", RAGCorpus.jobs),
        ("What color does {n} like?", "{n} likes the color {v}.", RAGCorpus.colors),
        ("What pet does {n} keep?", "{n} keeps a {v}.", RAGCorpus.pets),
    ]
    /// A friend, whose value is another name: the first step of the corpus's two-document
    /// questions.
    static let friend = (question: "Who is the friend of {n}?", statement: "{n} is a friend of {v}.", values: RAGCorpus.names)

    /// One example as (text pieces, whether each piece carries loss); pieces are encoded one
    /// by one, so a name or value is the same token wherever it stands.
    func example(_ g: inout SeededGenerator) -> [(text: String, loss: Bool)] {
        let stage = stages[Int(g.next() % UInt64(stages.count))]
        let k = pairs.lowerBound + Int(g.next() % UInt64(pairs.count))
        // Several kinds only where the statement names the kind.
        let m = stage == .statements || stage == .questions ? kinds.lowerBound + Int(g.next() % UInt64(kinds.count)) : 1
        var available = Self.kinds
        if friends && (stage == .statements || stage == .questions) { available.append(Self.friend) }
        RAGCorpus.shuffle(&available, &g)
        let chosen = Array(available.prefix(m))
        var names: [String] = []
        while names.count < k {
            let n = RAGCorpus.name(&g)
            if !names.contains(n) { names.append(n) }
        }
        // values[i][j]: name i's value of kind j.
        let values = names.map { _ in
            chosen.map { kind in
                var v = RAGCorpus.pick(kind.values, &g)
                while names.contains(v) { v = RAGCorpus.pick(kind.values, &g) }
                return v
            }
        }
        func fill(_ template: String, _ i: Int, _ j: Int) -> String {
            template.replacingOccurrences(of: "{n}", with: names[i]).replacingOccurrences(of: "{v}", with: values[i][j])
        }
        let asked = (0..<k).map { _ in (Int(g.next() % UInt64(k)), Int(g.next() % UInt64(m))) }
        var pieces: [(text: String, loss: Bool)] = []
        switch stage {
        case .chains:
            // names[i]'s friend is friendNames[i], whose document states a city and a job.
            var friendNames: [String] = []
            while friendNames.count < k {
                let n = RAGCorpus.name(&g)
                if !names.contains(n) && !friendNames.contains(n) { friendNames.append(n) }
            }
            let facts = friendNames.map { ($0, RAGCorpus.pick(RAGCorpus.cities, &g), RAGCorpus.pick(RAGCorpus.jobs, &g)) }
            var docs = (0..<k).map { "Doc: " + RAGCorpus.friendFact(names[$0], friendNames[$0]) + "\n" }
            docs += facts.map { "Doc: " + RAGCorpus.cityFact($0.0, $0.1) + " " + RAGCorpus.jobFact($0.0, $0.2) + "\n" }
            RAGCorpus.shuffle(&docs, &g)
            pieces += docs.map { ($0, false) }
            for (i, _) in asked {
                let f = facts[i]
                let q = RAGCorpus.friendQuestions(names[i], friend: f.0, city: f.1, job: f.2)[g.next() % 2 == 0 ? 0 : 1]
                pieces += [("Q: \(q.question)\nA:", false), (" \(q.answer)\n", true)]
            }
        case .pairs:
            for i in 0..<k { pieces += [(" \(names[i])", false), (" \(values[i][0])", false), (".", false)] }
            pieces.append(("Q", false))
            for (i, _) in asked { pieces += [(" \(names[i])", false), (" \(values[i][0])", true)] }
        case .oneWord, .twoWords, .statements, .questions:
            func statement(_ j: Int) -> String {
                stage == .oneWord ? "{n} has {v}." : stage == .twoWords ? "{n} keeps a {v}." : chosen[j].statement
            }
            // One document per name, its facts in random order.
            for i in 0..<k {
                var order = Array(0..<m)
                RAGCorpus.shuffle(&order, &g)
                pieces.append(("Doc: " + order.map { fill(statement($0), i, $0) }.joined(separator: " ") + "\n", false))
            }
            for (i, j) in asked {
                if stage == .questions {
                    pieces += [("Q: " + fill(chosen[j].question, i, j) + "\nA:", false), (" " + fill(statement(j), i, j) + "\n", true)]
                } else {
                    pieces += [("Q:", false), (" " + fill(stage == .statements ? statement(j) : "{n} {v}.", i, j) + "\n", true)]
                }
            }
        }
        return pieces
    }

    /// `count` training windows of exactly `window` tokens, one example each, padded with
    /// newline tokens, with one flag per token: true on the answers (the tokens that carry
    /// loss). Examples longer than a window are skipped.
    public func trainingTokenWindows(count: Int, window: Int, tokenizer: any TextTokenizer) -> (tokens: [Int32], questions: [Bool]) {
        var g = SeededGenerator(seed: seed ^ 0xD411_0000 &+ stages.reduce(0) { $0 &* 8 &+ UInt64((Stage.allCases.firstIndex(of: $1) ?? 0) + 1) })
        var encoded: [String: [Int32]] = [:]
        var tokens: [Int32] = [], mask: [Bool] = []
        tokens.reserveCapacity(count * window)
        mask.reserveCapacity(count * window)
        let pad = tokenizer.newlineToken
        for _ in 0..<count {
            var ids: [Int32] = [], loss: [Bool] = []
            for piece in example(&g) {
                let e = encoded[piece.text] ?? tokenizer.encode(piece.text)
                encoded[piece.text] = e
                ids += e
                loss += [Bool](repeating: piece.loss, count: e.count)
            }
            guard ids.count <= window else { continue }
            tokens += ids + [Int32](repeating: pad, count: window - ids.count)
            mask += loss + [Bool](repeating: false, count: window - ids.count)
        }
        return (tokens, mask)
    }
}
