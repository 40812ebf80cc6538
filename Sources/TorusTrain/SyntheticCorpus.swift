import Foundation
import TorusTensor

/// One question whose answer must be copied from the documents before it.
public struct QAExample: Codable, Equatable, Sendable {
    /// Documents and the question, ending with "A:" (what a model is prompted with).
    public var prompt: String
    /// The answer, without the leading space or trailing newline.
    public var answer: String
    /// 1 when the answer is in one fact, 2 when two facts from two documents are needed.
    public var hops: Int
}

/// The built-in corpus: short documents of entity-attribute facts followed by questions whose
/// answers must be copied from them, some needing two facts from two different documents.
/// Entity names are random syllables, so the answers cannot be memorised across examples.
public struct SyntheticCorpus: Sendable {
    static let cities = ["Tarsa", "Molvik", "Queren", "Adlo", "Bexhal", "Corin", "Dunmar", "Elsby", "Fenwick", "Galto"]
    static let colors = ["red", "green", "blue", "amber", "violet", "silver", "olive", "teal", "ochre", "white"]
    static let jobs = ["baker", "pilot", "tailor", "judge", "miner", "farmer", "poet", "smith", "nurse", "clerk"]
    static let consonants = Array("bdfgklmnprstvz")
    static let vowels = Array("aeiou")

    public let seed: UInt64
    public init(seed: UInt64) { self.seed = seed }

    static func name(_ g: inout SeededGenerator) -> String {
        var s = ""
        for _ in 0..<(2 + Int(g.next() % 2)) {
            s.append(consonants[Int(g.next() % UInt64(consonants.count))])
            s.append(vowels[Int(g.next() % UInt64(vowels.count))])
        }
        return s.prefix(1).uppercased() + s.dropFirst()
    }

    static func pick(_ list: [String], _ g: inout SeededGenerator) -> String { list[Int(g.next() % UInt64(list.count))] }

    /// Example `index` of `split` ("train" or "heldout"; they use disjoint random streams).
    public func example(_ index: Int, split: String) -> QAExample {
        var g = SeededGenerator(seed: seed ^ (split == "train" ? 0x5EED : 0xB0B0_0000) &+ UInt64(index) &* 0x9E37_79B9_7F4A_7C15)
        let a = Self.name(&g), b = Self.name(&g), c = Self.name(&g)
        let cityA = Self.pick(Self.cities, &g), colorA = Self.pick(Self.colors, &g), jobA = Self.pick(Self.jobs, &g)
        let cityC = Self.pick(Self.cities, &g), jobC = Self.pick(Self.jobs, &g)
        // Document 1 describes A; document 2 says B's friend is A; document 3 describes C.
        var docs = [
            "\(a) lives in \(cityA). \(a) likes the color \(colorA). \(a) works as a \(jobA).",
            "\(b) is a friend of \(a). \(b) lives in \(Self.pick(Self.cities, &g)).",
            "\(c) lives in \(cityC). \(c) works as a \(jobC).",
        ]
        if g.next() % 2 == 0 { docs.swapAt(0, 1) }
        let kind = Int(g.next() % 5)
        let question: String, answer: String, hops: Int
        switch kind {
        case 0: (question, answer, hops) = ("Where does \(a) live?", cityA, 1)
        case 1: (question, answer, hops) = ("What color does \(a) like?", colorA, 1)
        case 2: (question, answer, hops) = ("What does \(c) work as?", jobC, 1)
        case 3: (question, answer, hops) = ("Where does the friend of \(b) live?", cityA, 2)
        default: (question, answer, hops) = ("What does the friend of \(b) work as?", jobA, 2)
        }
        let text = docs.map { "Doc: \($0)\n" }.joined() + "Q: \(question)\nA:"
        return QAExample(prompt: text, answer: answer, hops: hops)
    }

    /// Training text: `count` examples with their answers, separated by blank lines.
    public func text(count: Int, split: String) -> String {
        (0..<count).map { i in let e = example(i, split: split); return e.prompt + " " + e.answer + "\n\n" }.joined()
    }
}
