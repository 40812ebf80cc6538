import Foundation
import TorusModel
import TorusTensor

/// A question ("Q: ...\nA:") and its answer.
public struct QuestionAnswer: Codable, Equatable, Sendable {
    public var question: String
    public var answer: String
}

/// One retrieval-augmented question: retrieved documents (chunks, in prompt order) and a
/// question about them.
public struct RAGExample: Codable, Equatable, Sendable {
    /// Each document as it stands in the prompt ("Doc: ...\n"); the same document has the same
    /// text in every prompt, so its KV can be reused.
    public var documents: [String]
    /// "Q: ...\nA:"
    public var question: String
    /// The answer line: the fact that answers, stated as the documents state it, and for a
    /// two-document question the linking fact first ("Abe is a friend of Kim. Kim lives in
    /// Tarsa."), so that each step copies from one document.
    public var answer: String
    /// What was asked for ("Tarsa").
    public var value: String
    /// "single": one document answers; "friend": two documents (a friend's facts);
    /// "previous": a document that refers to "the person in the previous document".
    public var kind: String
    /// Documents needed to answer.
    public var hops: Int
    /// More questions the same documents answer, with their answers (denser supervision for
    /// training; evaluation asks `question` alone).
    public var extra: [QuestionAnswer] = []

    /// What the model is prompted with.
    public var prompt: String { documents.joined() + question }
    /// The same question in the plain QA shape.
    public var qa: QAExample { QAExample(prompt: prompt, answer: answer, hops: hops) }
}

/// A RAG-shaped synthetic corpus: a world of people, each described by a document of several
/// facts plus filler that answers nothing (150-349 bytes by default); some people have a friend (named in
/// their document) and some a sister, described by a document that only says "the person in
/// the previous document" and so means something only right after that person's document.
/// A prompt holds 6-10 documents (the answering ones plus distractors, shuffled, a sister's
/// document kept right after its person's) and a question. Names come from a pool of 400
/// and facts are random per world, so answers must be read from the documents. The same world and seed give the same documents
/// in every prompt, so documents recur across requests.
public struct RAGCorpus: Sendable {
    static let cities = ["Tarsa", "Molvik", "Queren", "Adlo", "Bexhal", "Corin", "Dunmar", "Elsby", "Fenwick", "Galto",
                         "Hollin", "Istra", "Jorvale", "Kesh", "Lunde", "Marrow"]
    static let colors = ["red", "green", "blue", "amber", "violet", "silver", "olive", "teal", "ochre", "white", "crimson", "grey"]
    static let jobs = ["baker", "pilot", "tailor", "judge", "miner", "farmer", "poet", "smith", "nurse", "clerk", "sailor", "mason"]
    static let pets = ["cat", "dog", "parrot", "goat", "horse", "rabbit", "owl", "tortoise"]
    static let fillers = [
        "On quiet evenings {N} walks along the old canal and counts the boats.",
        "The harvest festival was loud that year, and nobody slept before midnight.",
        "{N} once spent a whole winter repairing a broken clock without success.",
        "Travelers say the roads in the north are muddy for most of the spring.",
        "{N} keeps a notebook of recipes collected from neighbours.",
        "A storm last autumn knocked down the bridge near the mill.",
        "{N} prefers tea without sugar and reads the newspaper every morning.",
        "The market square is crowded on Saturdays, when the fishermen return.",
        "{N} has never learned to swim, which surprises most people.",
        "Many families in the valley grow beans, onions and cabbages.",
        "{N} sings in a small choir that meets twice a month.",
        "The library closes early during the summer months.",
    ]

    /// One person of a world and the documents about them.
    public struct Person: Sendable {
        public var name: String
        public var city: String, job: String, color: String, pet: String
        public var friend: Int?
        public var sister: Sister?
        /// "Doc: ...\n"
        public var document: String
    }

    public struct Sister: Sendable {
        public var name: String
        public var job: String, city: String
        public var document: String
    }

    public let seed: UInt64
    /// Documents per prompt (the answering ones plus distractors).
    public let documents: ClosedRange<Int>
    /// Whether documents carry filler (false: facts only, for a first curriculum phase; the
    /// people and facts are the same either way).
    public let filler: Bool
    /// The length a person's document is filled up to, in bytes, drawn per document (150-349
    /// by default; longer ranges repeat filler sentences once all have been used). A sister's
    /// document (three facts and a filler sentence) is filled up to the lower bound.
    public let documentBytes: ClosedRange<Int>
    /// Whether a "previous" question's sister document follows another person than its own
    /// (then that person is asked about): the same document then means a different person's
    /// sister in different prompts, so its KV captured in one prompt misleads in another
    /// unless the chunk is recomputed in its new context. For measuring chunk reuse; the
    /// training corpus keeps every sister document after its own person.
    public var movedSisters = false
    /// Whether every distractor that has a sister brings her document along (otherwise one in
    /// two does), so that a prompt holds several sisters' documents and a sister's link can
    /// only be told from another's by the document before it. For measuring chunk reuse.
    public var allSisters = false
    /// Whether a prompt's extra questions also ask for the link a two-document answer starts
    /// with: the friend a document names ("Who is the friend of Abe?" answered "Abe is a friend
    /// of Kim.", whether or not Kim's document is there) and the sister a following document
    /// names ("Who is the sister of Abe?" answered "Abe has a sister named Lia."). For training:
    /// the first step of a two-document question, learned on its own.
    public var linkQuestions = false
    public init(seed: UInt64, documents: ClosedRange<Int> = 6...10, filler: Bool = true, documentBytes: ClosedRange<Int> = 150...349) {
        self.seed = seed
        self.documents = documents
        self.filler = filler
        self.documentBytes = documentBytes
    }

    /// People's names: a fixed pool of two-syllable names (the same for every seed, so one
    /// tokenizer trained on the corpus holds each as one token); a world draws its people from
    /// the pool at random and gives them random facts, so answers must still be read from the
    /// documents.
    public static let names: [String] = {
        var g = SeededGenerator(seed: 0x4E41_4D45)
        var seen = Set<String>(), out: [String] = []
        let consonants = Array("bdfgklmnprstvz"), vowels = Array("aeiou")
        let taken = Set(cities + colors + jobs + pets)
        while out.count < namePoolSize {
            var s = ""
            for _ in 0..<2 {
                s.append(consonants[Int(g.next() % UInt64(consonants.count))])
                s.append(vowels[Int(g.next() % UInt64(vowels.count))])
            }
            let n = s.prefix(1).uppercased() + s.dropFirst()
            if !taken.contains(n), seen.insert(n).inserted { out.append(n) }
        }
        return out
    }()
    static let namePoolSize = 400

    static func name(_ g: inout SeededGenerator) -> String { pick(names, &g) }

    static func pick<T>(_ list: [T], _ g: inout SeededGenerator) -> T { list[Int(g.next() % UInt64(list.count))] }

    static func shuffle<T>(_ a: inout [T], _ g: inout SeededGenerator) {
        guard a.count > 1 else { return }
        for i in stride(from: a.count - 1, to: 0, by: -1) { a.swapAt(i, Int(g.next() % UInt64(i + 1))) }
    }

    /// A world of `count` people with distinct names (world `index` of `split`).
    public func world(_ index: Int, split: String, count: Int) -> [Person] {
        var g = SeededGenerator(seed: seed ^ (split == "train" ? 0x7A61_0000 : 0x4E1D_0000_0000) &+ UInt64(index) &* 0x9E37_79B9_7F4A_7C15)
        var names = Set<String>()
        func fresh() -> String {
            while true { let n = Self.name(&g); if names.insert(n).inserted { return n } }
        }
        var people = (0..<count).map { _ in
            Person(name: fresh(), city: Self.pick(Self.cities, &g), job: Self.pick(Self.jobs, &g), color: Self.pick(Self.colors, &g),
                   pet: Self.pick(Self.pets, &g), friend: nil, sister: nil, document: "")
        }
        for i in people.indices {
            if g.next() % 2 == 0 { people[i].friend = (i + 1 + Int(g.next() % UInt64(count - 1))) % count }
            if g.next() % 3 == 0 {
                let s = fresh(), job = Self.pick(Self.jobs, &g), city = Self.pick(Self.cities, &g)
                var facts = ["The person in the previous document has a sister named \(s).", Self.jobFact(s, job), Self.cityFact(s, city)]
                let extra = Self.filler("\(s)", &g)
                if filler { facts.append(extra) }
                var text = facts.joined(separator: " ")
                // Its own generator: a longer document leaves the world's later draws unchanged.
                var fillG = SeededGenerator(seed: (seed &+ UInt64(index) &* 0x9E37_79B9 &+ UInt64(i)) ^ 0x5349_5354_4552)
                if filler { Self.fill(&text, name: s, to: documentBytes.lowerBound, &fillG) }
                people[i].sister = Sister(name: s, job: job, city: city, document: "Doc: " + text + "\n")
            }
        }
        for i in people.indices {
            let p = people[i], n = p.name
            var facts = Self.singleQuestions(p).map(\.answer)
            if let f = p.friend { facts.append(Self.friendFact(n, people[f].name)) }
            Self.shuffle(&facts, &g)
            var text = facts.joined(separator: " ")
            // Filler that answers nothing, up to the drawn length.
            let target = documentBytes.lowerBound + Int(g.next() % UInt64(documentBytes.count))
            var unused = Self.fillers
            Self.shuffle(&unused, &g)
            if filler { Self.fill(&text, name: n, to: target, unused: &unused, &g) }
            people[i].document = "Doc: " + text + "\n"
        }
        return people
    }

    static func cityFact(_ n: String, _ city: String) -> String { "\(n) lives in \(city)." }
    static func jobFact(_ n: String, _ job: String) -> String { "\(n) works as a \(job)." }
    static func friendFact(_ n: String, _ f: String) -> String { "\(n) is a friend of \(f)." }
    static func sisterFact(_ n: String, _ s: String) -> String { "\(n) has a sister named \(s)." }

    /// The two questions about the friend of `n` (`f`, who lives in `city` and works as a `job`):
    /// (question, answer line, answer value), the city one first. The answer states the link first.
    static func friendQuestions(_ n: String, friend f: String, city: String, job: String) -> [(question: String, answer: String, value: String)] {
        let link = friendFact(n, f)
        return [("Where does the friend of \(n) live?", link + " " + cityFact(f, city), city),
                ("What does the friend of \(n) work as?", link + " " + jobFact(f, job), job)]
    }

    /// The two questions about the sister `s` of `n` (whose document follows `n`'s): (question,
    /// answer line, answer value), the job one first. The answer states the link first.
    static func sisterQuestions(_ n: String, sister s: Sister) -> [(question: String, answer: String, value: String)] {
        let link = sisterFact(n, s.name)
        return [("What does the sister of \(n) work as?", link + " " + jobFact(s.name, s.job), s.job),
                ("Where does the sister of \(n) live?", link + " " + cityFact(s.name, s.city), s.city)]
    }

    /// The four one-document questions about a person: (question, answer line, answer value).
    static func singleQuestions(_ p: Person) -> [(question: String, answer: String, value: String)] {
        [("Where does \(p.name) live?", cityFact(p.name, p.city), p.city),
         ("What does \(p.name) work as?", jobFact(p.name, p.job), p.job),
         ("What color does \(p.name) like?", "\(p.name) likes the color \(p.color).", p.color),
         ("What pet does \(p.name) keep?", "\(p.name) keeps a \(p.pet).", p.pet)]
    }

    /// Appends filler sentences about `name` to `text` until it holds `target` bytes: those of
    /// `unused` first (taken from its end), then all of them again in a new order.
    static func fill(_ text: inout String, name: String, to target: Int, unused: inout [String], _ g: inout SeededGenerator) {
        while text.utf8.count < target {
            if unused.isEmpty { unused = fillers; shuffle(&unused, &g) }
            guard let f = unused.popLast() else { return }
            text += " " + f.replacingOccurrences(of: "{N}", with: name)
        }
    }

    static func fill(_ text: inout String, name: String, to target: Int, _ g: inout SeededGenerator) {
        var unused: [String] = []
        fill(&text, name: name, to: target, unused: &unused, &g)
    }

    static func filler(_ name: String, _ g: inout SeededGenerator) -> String {
        pick(fillers, &g).replacingOccurrences(of: "{N}", with: name)
    }

    /// Question `index` over world `world` (people `count`): the answering documents plus
    /// distractors, 6-10 documents in all, shuffled.
    public func example(_ index: Int, split: String, world worldIndex: Int, people: [Person]) -> RAGExample {
        var g = SeededGenerator(seed: seed ^ 0x0DE5_7100 &+ UInt64(worldIndex) &* 0x9E37_79B9 &+ UInt64(index) &* 0x2545_F491_4F6C_DD1D
                                ^ (split == "train" ? 0 : 0xFFFF_0000_0000))
        let roll = g.next() % 10
        var kind = roll < 5 ? "single" : roll < 8 ? "friend" : "previous"
        let withFriend = people.indices.filter { people[$0].friend != nil }
        let withSister = people.indices.filter { people[$0].sister != nil }
        if kind == "friend" && withFriend.isEmpty { kind = "single" }
        if kind == "previous" && withSister.isEmpty { kind = "single" }
        var needed: [Int] = [], question = "", answer = "", value = "", hops = 1
        var movedTo: Int? = nil, sisterOwner: Int? = nil
        switch kind {
        case "friend":
            let a = Self.pick(withFriend, &g), f = people[a].friend ?? a
            needed = [a, f]
            hops = 2
            let asked = Self.friendQuestions(people[a].name, friend: people[f].name, city: people[f].city, job: people[f].job)
            (question, answer, value) = asked[g.next() % 2 == 0 ? 0 : 1]
        case "previous":
            let a = Self.pick(withSister, &g)
            needed = [a]
            hops = 2
            let s = people[a].sister ?? Sister(name: "", job: "", city: "", document: "")
            sisterOwner = a
            // With moved sisters the document follows another person (drawn here), who is asked about.
            if movedSisters { movedTo = (a + 1 + Int(g.next() % UInt64(people.count - 1))) % people.count }
            let asked = people[movedTo ?? a].name
            (question, answer, value) = Self.sisterQuestions(asked, sister: s)[g.next() % 2 == 0 ? 0 : 1]
            if let b = movedTo { needed = [b] }
        default:
            let a = Self.pick(Array(people.indices), &g)
            needed = [a]
            let p = people[a]
            let asked = Self.singleQuestions(p)[Int(g.next() % 4)]
            (question, answer, value) = (asked.question, asked.answer, asked.value)
        }
        // Units of documents: a person's document, followed by their sister's when that is needed
        // or comes along with a distractor.
        let total = documents.lowerBound + Int(g.next() % UInt64(documents.count))
        // A moved sister's own person stays out (its sister's document would appear twice).
        var candidates = Array(people.indices.filter { !needed.contains($0) && (movedTo == nil || $0 != sisterOwner) })
        Self.shuffle(&candidates, &g)
        func unit(_ i: Int) -> [String] {
            // The asked-about person's sister document always follows them; a distractor's does
            // in one world out of two (a fixed choice per person, so documents recur as units).
            let p = people[i]
            if kind == "previous" && needed.first == i, let o = sisterOwner, let s = people[o].sister { return [p.document, s.document] }
            guard let s = p.sister else { return [p.document] }
            if allSisters { return [p.document, s.document] }
            return (UInt64(i) &* 0x9E37_79B9_7F4A_7C15 ^ UInt64(worldIndex)) % 2 == 0 ? [p.document, s.document] : [p.document]
        }
        var units = needed.map(unit)
        var count = units.reduce(0) { $0 + $1.count }
        while count < total, let next = candidates.popLast() {
            let u = unit(next)
            if count + u.count > max(documents.upperBound, total) { continue }
            units.append(u)
            count += u.count
        }
        Self.shuffle(&units, &g)
        // Every other question these documents answer.
        let docs = units.flatMap { $0 }
        var extra: [QuestionAnswer] = []
        for p in people where docs.contains(p.document) {
            extra += Self.singleQuestions(p).map { QuestionAnswer(question: "Q: \($0.question)\nA:", answer: $0.answer) }
            if linkQuestions, let f = p.friend {
                extra.append(QuestionAnswer(question: "Q: Who is the friend of \(p.name)?\nA:", answer: Self.friendFact(p.name, people[f].name)))
            }
            if let f = p.friend, docs.contains(people[f].document) {
                extra += Self.friendQuestions(p.name, friend: people[f].name, city: people[f].city, job: people[f].job)
                    .map { QuestionAnswer(question: "Q: \($0.question)\nA:", answer: $0.answer) }
            }
            if let s = p.sister, let at = docs.firstIndex(of: p.document), at + 1 < docs.count, docs[at + 1] == s.document {
                if linkQuestions {
                    extra.append(QuestionAnswer(question: "Q: Who is the sister of \(p.name)?\nA:", answer: Self.sisterFact(p.name, s.name)))
                }
                extra += Self.sisterQuestions(p.name, sister: s).map { QuestionAnswer(question: "Q: \($0.question)\nA:", answer: $0.answer) }
            }
        }
        extra.removeAll { $0.question == "Q: \(question)\nA:" }
        Self.shuffle(&extra, &g)
        return RAGExample(documents: docs, question: "Q: \(question)\nA:", answer: answer, value: value, kind: kind, hops: hops, extra: extra)
    }

    /// The standard split: world w holds `peoplePerWorld` people and `questionsPerWorld` questions.
    public static let peoplePerWorld = 12
    public static let questionsPerWorld = 8

    /// Example `index` of `split`, with the world it belongs to.
    public func example(_ index: Int, split: String) -> RAGExample {
        let w = index / Self.questionsPerWorld
        return example(index % Self.questionsPerWorld, split: split, world: w, people: world(w, split: split, count: Self.peoplePerWorld))
    }

    /// Examples 0..<count of `split` (each world built once).
    public func examples(count: Int, split: String) -> [RAGExample] {
        var out: [RAGExample] = []
        var w = -1
        var people: [Person] = []
        for i in 0..<count {
            if i / Self.questionsPerWorld != w {
                w = i / Self.questionsPerWorld
                people = world(w, split: split, count: Self.peoplePerWorld)
            }
            out.append(example(i % Self.questionsPerWorld, split: split, world: w, people: people))
        }
        return out
    }

    /// Training windows of exactly `window` bytes, one example each: its documents, its question
    /// and answer, then as many other questions about the same documents as fit, then newline
    /// padding (a plain stream cut into windows would leave many questions without their
    /// documents); with one flag per byte, true on the questions and answers. Examples that do
    /// not fit are skipped.
    public func trainingWindowsWithMask(count: Int, split: String, window: Int) -> (text: String, questions: [Bool]) {
        let w = trainingTokenWindows(count: count, split: split, window: window, tokenizer: ByteTokenizer())
        return (String(decoding: w.tokens.map { UInt8(truncatingIfNeeded: $0) }, as: UTF8.self), w.questions)
    }

    /// `trainingWindowsWithMask` in tokens of `tokenizer`: windows of exactly `window` tokens,
    /// each document and each question line encoded on its own (so a document has the same
    /// tokens in every prompt), padded with newline tokens.
    public func trainingTokenWindows(count: Int, split: String, window: Int,
                                     tokenizer: any TextTokenizer) -> (tokens: [Int32], questions: [Bool]) {
        var tokens: [Int32] = [], mask: [Bool] = []
        let pad = tokenizer.newlineToken
        // Documents and question lines recur across the examples of a world: each is encoded once.
        var encoded: [String: [Int32]] = [:]
        func encode(_ text: String) -> [Int32] {
            if let ids = encoded[text] { return ids }
            let ids = tokenizer.encode(text)
            encoded[text] = ids
            return ids
        }
        for e in examples(count: count, split: split) {
            let docs = e.documents.flatMap(encode)
            var unit = docs + encode(e.question + " " + e.answer + "\n")
            guard unit.count <= window else { continue }
            for q in e.extra {
                let line = encode(q.question + " " + q.answer + "\n")
                if unit.count + line.count > window { break }
                unit += line
            }
            mask += [Bool](repeating: false, count: docs.count) + [Bool](repeating: true, count: unit.count - docs.count)
                + [Bool](repeating: false, count: window - unit.count)
            tokens += unit + [Int32](repeating: pad, count: window - unit.count)
        }
        return (tokens, mask)
    }

    /// Text of `count` examples, each its prompt and answer, separated by blank lines (the
    /// held-out text).
    public func text(count: Int, split: String) -> String {
        var out = ""
        for e in examples(count: count, split: split) { out += e.prompt + " " + e.answer + "\n\n" }
        return out
    }
}
