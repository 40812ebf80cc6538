import Foundation
import Testing
import TorusModel

/// Torus's `tokenizer.json` reader against the `tokenizers` package on byte-level BPE
/// tokenizers that package trains (GPT-2 regex, prefix space, a Llama-3-style Split, digits),
/// over text with Unicode, whitespace runs, contractions, numbers and special tokens.
@Suite struct TokenizerParityTests {
    @Test(.enabled(if: ClientPython.executable != nil, Comment(rawValue: ClientPython.skipMessage)))
    func encodeAndDecodeMatchTheTokenizersPackage() throws {
        let python = try #require(ClientPython.executable)
        let dir = NSTemporaryDirectory() + "torus-tokenizers-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
        let r = try TorusBinary.run(python, [ClientPython.repository + "/Tests/parity/tokenizer_parity.py", dir], timeout: 300)
        guard r.status == 0 else {
            // The tokenizers package may be missing from that Python; say so instead of failing.
            #expect(r.stderr.contains("No module named 'tokenizers'"), "\(r.output)")
            return
        }
        for variant in ["gpt2", "prefix-space", "llama3-split", "digits"] {
            let path = "\(dir)/\(variant)"
            let tokenizer = try TokenizerJSON.load(path: path + "/tokenizer.json", modelVocabulary: 1000)
            #expect(tokenizer is ByteLevelBPE, "\(variant)")
            let data = try Data(contentsOf: URL(fileURLWithPath: path + "/cases.json"))
            let cases = try #require(try JSONSerialization.jsonObject(with: data) as? [[String: Any]])
            #expect(cases.count > 50)
            for c in cases {
                let text = try #require(c["text"] as? String), ids = try #require(c["ids"] as? [Int])
                let got = tokenizer.encode(text).map(Int.init)
                #expect(got == ids, "\(variant): \(text.debugDescription)")
                #expect(tokenizer.decode(ids.map(Int32.init)) == (c["decoded"] as? String), "\(variant): decode \(text.debugDescription)")
            }
            #expect(tokenizer.eosTokenID == Int32(0))
        }
    }

    /// A tokenizer Torus trains (BPETrainer) reads the same in the `tokenizers` package.
    @Test func aTokenizerTorusTrainsEncodesTheSameInTheTokenizersPackage() throws {
        guard let python = ClientPython.executable else { return }
        let dir = NSTemporaryDirectory() + "torus-bpetrain-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        var corpus = ""
        for i in 0..<200 { corpus += "Doc: Person\(i % 17) lives in City\(i % 5). They keep a cat, don't they? 12.5% of \(i)\n\n" }
        let trainer = BPETrainer(text: corpus, vocabularySize: 400)
        try trainer.json.write(toFile: dir + "/tokenizer.json", atomically: true, encoding: .utf8)
        let ours = try #require(try TokenizerJSON.load(path: dir + "/tokenizer.json", modelVocabulary: 400) as? ByteLevelBPE)
        let texts = [corpus, "Doc: Nobody lives in Nowhere.\n", "héllo 😀  world\n\n\t x", "I'll've 3.14159 THE end  "]
        let r = try TorusBinary.run(python, ["-c", "import sys, json; from tokenizers import Tokenizer; "
            + "t = Tokenizer.from_file(sys.argv[1]); print(json.dumps([t.encode(x).ids for x in json.loads(sys.argv[2])]))",
            dir + "/tokenizer.json", String(decoding: try JSONSerialization.data(withJSONObject: texts), as: UTF8.self)], timeout: 60)
        guard r.status == 0 else {
            #expect(r.stderr.contains("No module named 'tokenizers'"), "\(r.output)")
            return
        }
        let theirs = try #require(try JSONSerialization.jsonObject(with: Data(r.stdout.utf8)) as? [[Int]])
        for (text, ids) in zip(texts, theirs) { #expect(ours.encode(text).map(Int.init) == ids, "\(text.prefix(60).debugDescription)") }
    }

    /// What Torus writes for byte models reads back as the byte tokenizer, and the `tokenizers`
    /// package reads it with ids equal to the bytes.
    @Test func byteTokenizerJSONIsTheByteTokenizer() throws {
        let dir = NSTemporaryDirectory() + "torus-bytetok-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        try TokenizerJSON.byteTokenizerJSON().write(toFile: dir + "/tokenizer.json", atomically: true, encoding: .utf8)
        let t = try TokenizerJSON.load(path: dir + "/tokenizer.json", modelVocabulary: 256)
        #expect(t is ByteTokenizer)
        guard let python = ClientPython.executable else { return }
        let text = "héllo\t\n 😀 Ωμέγα"
        let r = try TorusBinary.run(python, ["-c", "import sys, json; from tokenizers import Tokenizer; "
            + "t = Tokenizer.from_file(sys.argv[1]); print(json.dumps(t.encode(sys.argv[2]).ids)); "
            + "print(json.dumps(t.decode(list(sys.argv[2].encode()))))", dir + "/tokenizer.json", text], timeout: 60)
        guard r.status == 0 else {
            #expect(r.stderr.contains("No module named 'tokenizers'"), "\(r.output)")
            return
        }
        let lines = r.stdout.split(separator: "\n").map(String.init)
        let bytes: [String] = text.utf8.map { String($0) }
        let expected = "[" + bytes.joined(separator: ", ") + "]"
        #expect(lines.first == expected, "\(r.output)")
        let decoded = try JSONSerialization.jsonObject(with: Data(lines[1].utf8), options: .fragmentsAllowed) as? String
        #expect(decoded == text)
    }
}
