import Foundation
import Testing
@testable import TorusModel

@Suite struct BPETrainerTests {
    static let corpus: String = {
        let names = ["Galto", "Queren", "Tarsa", "Molvik", "Bexhal"], cities = ["Adlo", "Corin", "Dunmar", "Elsby"]
        var text = ""
        for i in 0..<120 {
            let n = names[i % names.count], c = cities[(i * 7) % cities.count]
            text += "Doc: \(n) lives in \(c). \(n) keeps a cat.\nQ: Where does \(n) live?\nA: \(c)\n\n"
        }
        return text
    }()

    static func trained(_ size: Int) throws -> ByteLevelBPE {
        let trainer = BPETrainer(text: corpus, vocabularySize: size)
        let path = NSTemporaryDirectory() + "torus-bpe-\(getpid())-\(UInt32.random(in: 0...UInt32.max)).json"
        defer { try? FileManager.default.removeItem(atPath: path) }
        try trainer.json.write(toFile: path, atomically: true, encoding: .utf8)
        let t = try TokenizerJSON.load(path: path, modelVocabulary: size)
        return try #require(t as? ByteLevelBPE)
    }

    /// The trained tokenizer reads back through tokenizer.json, round-trips any text (also
    /// text it never saw) and encodes the training text in far fewer tokens than bytes.
    @Test func trainedTokenizerRoundTripsAndCompresses() throws {
        let t = try Self.trained(320)
        #expect(t.vocab.count == 320)
        for text in [Self.corpus, "Doc: Zyx lives in Nowhere.\n", "héllo 😀 world  \n\n\t tabs", ""] {
            #expect(t.decode(t.encode(text)) == text, "\(text.debugDescription)")
        }
        let ids = t.encode(Self.corpus)
        #expect(ids.count * 5 < Self.corpus.utf8.count * 2, "\(ids.count) tokens for \(Self.corpus.utf8.count) bytes")
        // Frequent words are single tokens.
        #expect(t.encode(" lives").count == 1 && t.encode(" Galto").count == 1)
    }

    /// Merges follow frequency: the first merge is the most frequent adjacent byte pair, and a
    /// vocabulary of 256 is the bytes alone.
    @Test func theFirstMergeIsTheMostFrequentPairAndNoMergesLeaveTheBytes() throws {
        let trainer = BPETrainer(text: "aaab aaab aaab xy", vocabularySize: 257)
        #expect(trainer.merges.count == 1 && trainer.tokens[256] == "aa")
        let path = NSTemporaryDirectory() + "torus-bpe-bytes-\(getpid()).json"
        defer { try? FileManager.default.removeItem(atPath: path) }
        try BPETrainer(text: Self.corpus, vocabularySize: 256).json.write(toFile: path, atomically: true, encoding: .utf8)
        #expect(try TokenizerJSON.load(path: path, modelVocabulary: 256) is ByteTokenizer)
    }
}
