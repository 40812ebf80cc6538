import ArgumentParser
import Foundation
import TorusModel
import TorusTrain

struct DataCommand: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "data",
        abstract: "Prepare training data.", subcommands: [DataPrepare.self, DataSynth.self])
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

    func run() throws {
        guard ["qa", "rag"].contains(kind) else { throw ValidationError("--kind must be qa or rag, not '\(kind)'") }
        try FileManager.default.createDirectory(atPath: out, withIntermediateDirectories: true)
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys]
        if kind == "rag" {
            let corpus = RAGCorpus(seed: seed)
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
