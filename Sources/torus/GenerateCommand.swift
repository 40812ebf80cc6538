import ArgumentParser
import Foundation
import TorusModel

struct GenerateCommand: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "generate",
        abstract: "Generate a continuation of a prompt with the KV cache.")

    @Option(help: "Hugging Face model directory.") var model: String
    @Option(help: "Prompt text (byte tokenizer).") var prompt: String?
    @Option(help: "Prompt as token ids, e.g. \"1,2,3\".") var promptIds: String?
    @Option(help: "Tokens to generate.") var maxTokens: Int = 32
    @Option(help: "Sampling temperature; 0 is greedy.") var temperature: Float = 0
    @Option(help: "Nucleus sampling threshold.") var topP: Float = 1
    @Option(help: "Sampling seed.") var seed: UInt64 = 0
    @Flag(help: "Print token ids instead of text.") var ids = false
    @Flag(help: "Stop at the first newline token (10).") var stopAtNewline = false

    func validate() throws {
        if (prompt == nil) == (promptIds == nil) { throw ValidationError("give exactly one of --prompt and --prompt-ids") }
        if maxTokens < 1 { throw ValidationError("--max-tokens must be positive") }
        if temperature < 0 { throw ValidationError("--temperature must not be negative") }
        if !(topP > 0 && topP <= 1) { throw ValidationError("--top-p must be in (0, 1]") }
    }

    func run() throws {
        let m = try HFCheckpoint.load(directory: model)
        let tokenizer = ByteTokenizer()
        let input: [Int32]
        if let promptIds { input = try parseTokenIDs(promptIds, vocab: m.config.vocabSize) } else {
            guard m.config.vocabSize >= ByteTokenizer.vocabularyFloor else {
                throw ValidationErrorMessage("--prompt needs vocab_size >= 256 for the byte tokenizer; this model has \(m.config.vocabSize): use --prompt-ids")
            }
            input = tokenizer.encode(prompt ?? "")
        }
        let began = Date()
        var decoder = ByteStreamDecoder()
        let out = try m.generate(prompt: input, maxNewTokens: maxTokens,
                                 options: SamplingOptions(temperature: temperature, topP: topP, seed: seed),
                                 stopToken: stopAtNewline ? 10 : nil) { token in
            if !ids { FileHandle.standardOutput.write(Data(decoder.push(token).utf8)) }
        }
        if ids { print(out.map(String.init).joined(separator: ",")) } else { print(decoder.flush()) }
        let dt = Date().timeIntervalSince(began)
        warn(String(format: "generate: %d prompt + %d new tokens in %.2f s (%.1f tokens/s)", input.count, out.count, dt, Double(out.count) / dt))
    }
}
