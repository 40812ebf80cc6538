import ArgumentParser
import Foundation
import TorusModel
import TorusTrain

struct DataCommand: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "data",
        abstract: "Prepare training data.", subcommands: [DataPrepare.self, DataSynth.self, DataTokenizer.self])
}

struct DataPrepare: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "prepare",
        abstract: "Turn text files into a token file (byte tokens, files joined by a blank line).")
    @Option(parsing: .upToNextOption, help: "Text files.") var input: [String]
    @Option(help: "Output token file.") var out: String

    func run() throws {
        guard !input.isEmpty else { throw ValidationError("--input needs at least one file") }
        var tokens: [Int32] = []
        for path in input {
            guard let data = FileManager.default.contents(atPath: path) else {
                throw ValidationErrorMessage("input \(path) does not exist or cannot be read")
            }
            if !tokens.isEmpty { tokens += [10, 10] }
            tokens += data.map { Int32($0) }
        }
        try TokenFile.write(tokens, to: out)
        print("wrote \(out): \(tokens.count) tokens from \(input.count) file(s)")
    }
}

struct DataSynth: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "synth",
        abstract: "Write a built-in synthetic corpus: train.tokens, heldout.tokens, heldout.jsonl (qa: short facts; rag: 6-10 retrieved documents per question).")
    @Option(help: "Corpus: qa or rag.") var kind: String = "qa"
    @Option(help: "Output directory.") var out: String
    @Option(help: "Training examples.") var train: Int = 20000
    @Option(help: "Held-out examples.") var heldout: Int = 200
    @Option(help: "Seed.") var seed: UInt64 = 0
    @Option(help: "rag: documents per prompt, MIN-MAX (data.rag_documents).") var documents: String = "6-10"
    @Flag(inversion: .prefixedNo, help: "rag: filler sentences in documents (data.rag_filler).") var filler: Bool = true
    @Flag(help: "rag: a sister's document follows another person, who is asked about (for measuring chunk reuse).") var movedSisters = false
    @Flag(help: "rag: every distractor with a sister brings her document (for measuring chunk reuse).") var allSisters = false
    @Option(help: "rag: bytes each person's document is filled up to, MIN-MAX (longer ones repeat filler sentences).") var documentBytes: String = "150-349"
    @Flag(help: "rag: also write train.jsonl, the training examples as heldout.jsonl holds the held-out ones (for training a peer on the same data).")
    var trainJsonl = false

    func run() throws {
        guard ["qa", "rag"].contains(kind) else { throw ValidationError("--kind must be qa or rag, not '\(kind)'") }
        let bounds = try RangeOption.parse(documents, option: "--documents", example: "6-10")
        let bytes = try RangeOption.parse(documentBytes, option: "--document-bytes", example: "900-1200")
        try FileManager.default.createDirectory(atPath: out, withIntermediateDirectories: true)
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys]
        if kind == "rag" {
            var corpus = RAGCorpus(seed: seed, documents: bounds, filler: filler, documentBytes: bytes)
            corpus.movedSisters = movedSisters
            corpus.allSisters = allSisters
            if trainJsonl {
                let lines = try corpus.examples(count: train, split: "train").map { String(decoding: try encoder.encode($0), as: UTF8.self) }
                try (lines.joined(separator: "\n") + "\n").write(toFile: out + "/train.jsonl", atomically: true, encoding: .utf8)
            }
            try write(train: corpus.text(count: train, split: "train"), heldout: corpus.text(count: heldout, split: "heldout"),
                      questions: try (0..<heldout).map { try encoder.encode(corpus.example($0, split: "heldout")) })
            print("wrote \(out)/train.tokens (\(train) RAG examples), heldout.tokens and heldout.jsonl (\(heldout) questions with their documents)")
        } else {
            let corpus = SyntheticCorpus(seed: seed)
            try write(train: corpus.text(count: train, split: "train"), heldout: corpus.text(count: heldout, split: "heldout"),
                      questions: try (0..<heldout).map { try encoder.encode(corpus.example($0, split: "heldout")) })
            print("wrote \(out)/train.tokens (\(train) examples), heldout.tokens and heldout.jsonl (\(heldout) questions)")
        }
    }

    /// train.tokens and heldout.tokens (byte tokens) and heldout.jsonl (one question a line).
    func write(train: String, heldout: String, questions: [Data]) throws {
        let tokenizer = ByteTokenizer()
        try TokenFile.write(tokenizer.encode(train), to: out + "/train.tokens")
        try TokenFile.write(tokenizer.encode(heldout), to: out + "/heldout.tokens")
        let lines = questions.map { String(decoding: $0, as: UTF8.self) }
        try (lines.joined(separator: "\n") + "\n").write(toFile: out + "/heldout.jsonl", atomically: true, encoding: .utf8)
    }
}

struct DataTokenizer: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "tokenizer",
        abstract: "Train a byte-level BPE tokenizer (GPT-2's pre-tokenizer) and write DIR/tokenizer.json.")
    @Option(parsing: .upToNextOption, help: "Text files to train on.") var input: [String] = []
    @Option(help: "Or a built-in corpus: qa or rag (its training split).") var synth: String?
    @Option(help: "Examples of the built-in corpus.") var examples: Int = 2000
    @Option(help: "Seed of the built-in corpus.") var seed: UInt64 = 0
    @Option(help: "Vocabulary size (256 byte tokens plus merges).") var vocab: Int = 1024
    @Option(help: "Output directory.") var out: String

    func run() throws {
        guard vocab >= 256 else { throw ValidationError("--vocab \(vocab): at least 256 (the bytes)") }
        var text = ""
        if let synth {
            switch synth {
            case "qa": text = SyntheticCorpus(seed: seed).text(count: examples, split: "train")
            case "rag": text = RAGCorpus(seed: seed).text(count: examples, split: "train")
            default: throw ValidationError("--synth \(synth): known corpora are qa and rag")
            }
        }
        for path in input {
            guard let data = FileManager.default.contents(atPath: path) else {
                throw ValidationErrorMessage("input \(path) does not exist or cannot be read")
            }
            text += String(decoding: data, as: UTF8.self)
        }
        guard !text.isEmpty else { throw ValidationError("give --input FILE... or --synth qa|rag") }
        let start = Date()
        print("training a \(vocab)-token BPE on \(text.utf8.count) bytes ...")
        let trainer = BPETrainer(text: text, vocabularySize: vocab) { n in
            if n % 128 == 0 { print(String(format: "  %d tokens (%.1f s)", n, -start.timeIntervalSinceNow)) }
        }
        try FileManager.default.createDirectory(atPath: out, withIntermediateDirectories: true)
        try trainer.json.write(toFile: out + "/tokenizer.json", atomically: true, encoding: .utf8)
        let tokenizer = try TokenizerJSON.load(path: out + "/tokenizer.json", modelVocabulary: trainer.tokens.count)
        let sample = String(text.prefix(200_000))
        let count = tokenizer.encode(sample).count
        print(String(format: "wrote %@/tokenizer.json: %d tokens (%d merges); %.2f bytes per token on the first %d bytes",
                     out, trainer.tokens.count, trainer.merges.count, Double(sample.utf8.count) / Double(max(count, 1)), sample.utf8.count))
    }
}
