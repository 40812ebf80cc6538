import ArgumentParser
import Foundation
import TorusComm
import TorusModel
import TorusParallel

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
    @Option(help: "Split the prompt over the ranks of mpirun for prefill and keep the KV cache distributed: ring or tokenring.") var sequenceParallel: String?
    @Option(help: "Layout of the prompt over the ranks with --sequence-parallel: zigzag or contiguous.") var layout: String = "contiguous"

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
        let options = SamplingOptions(temperature: temperature, topP: topP, seed: seed)
        let out: [Int32]
        var printing = true
        if let sequenceParallel {
            let method = try SequenceParallelMethod(name: sequenceParallel)
            guard let kind = SequenceLayoutKind(rawValue: layout) else { throw SequenceParallelError.unknownLayout(layout) }
            // Validate the split before any communication.
            let world = try MPIRuntime.world()
            _ = try SequenceLayout(kind: kind, ranks: world.size, length: input.count)
            printing = world.rank == 0
            out = try ShardedGeneration.generate(model: m, prompt: input, maxNewTokens: maxTokens, options: options, comm: world,
                                                 method: method, layout: kind, stopToken: stopAtNewline ? 10 : nil) { token in
                if !ids && printing { FileHandle.standardOutput.write(Data(decoder.push(token).utf8)) }
            }
        } else {
            out = try m.generate(prompt: input, maxNewTokens: maxTokens, options: options,
                                 stopToken: stopAtNewline ? 10 : nil) { token in
                if !ids { FileHandle.standardOutput.write(Data(decoder.push(token).utf8)) }
            }
        }
        guard printing else { return }
        if ids { print(out.map(String.init).joined(separator: ",")) } else { print(decoder.flush()) }
        let dt = Date().timeIntervalSince(began)
        warn(String(format: "generate: %d prompt + %d new tokens in %.2f s (%.1f tokens/s)", input.count, out.count, dt, Double(out.count) / dt))
    }
}
