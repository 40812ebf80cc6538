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
    @Option(help: "Prompt from a file: text (the model's tokenizer), or a Torus token file.") var promptFile: String?
    @Option(help: "Tokens to generate.") var maxTokens: Int = 32
    @Option(help: "Sampling temperature; 0 is greedy.") var temperature: Float = 0
    @Option(help: "Nucleus sampling threshold.") var topP: Float = 1
    @Option(help: "Sampling seed.") var seed: UInt64 = 0
    @Option(help: "Dense layers in float32 or bfloat16 (as torus serve --dtype).") var dtype: String = "float32"
    @Flag(help: "Print token ids instead of text.") var ids = false
    @Flag(help: "Stop at the first newline token (10).") var stopAtNewline = false
    @Option(help: "Split the prompt over the ranks of mpirun for prefill and keep the KV cache distributed: ring or tokenring.") var sequenceParallel: String?
    @Option(help: "Layout of the prompt over the ranks with --sequence-parallel: zigzag or contiguous.") var layout: String = "contiguous"

    func validate() throws {
        if [prompt != nil, promptIds != nil, promptFile != nil].filter({ $0 }).count != 1 {
            throw ValidationError("give exactly one of --prompt, --prompt-ids and --prompt-file")
        }
        if maxTokens < 1 { throw ValidationError("--max-tokens must be positive") }
        if temperature < 0 { throw ValidationError("--temperature must not be negative") }
        if !(topP > 0 && topP <= 1) { throw ValidationError("--top-p must be in (0, 1]") }
    }

    func run() throws {
        let m = try HFCheckpoint.load(directory: model)
        m.setInferencePrecision(try InferencePrecision(option: dtype))
        // Token ids need no tokenizer (a small-vocabulary model may have none).
        let tokenizer = try? ModelTokenizer.load(directory: model, vocabularySize: m.config.vocabSize)
        func textTokenizer() throws -> any TextTokenizer {
            if let tokenizer { return tokenizer }
            return try ModelTokenizer.load(directory: model, vocabularySize: m.config.vocabSize)
        }
        let input: [Int32]
        if let promptIds {
            input = try parseTokenIDs(promptIds, vocab: m.config.vocabSize)
        } else if let promptFile {
            if TokenFile.isTokenFile(promptFile) {
                input = try TokenFile.read(promptFile, vocab: m.config.vocabSize)
            } else {
                guard let data = FileManager.default.contents(atPath: promptFile) else {
                    throw ValidationErrorMessage("--prompt-file \(promptFile) does not exist or cannot be read")
                }
                input = try textTokenizer().encode(String(decoding: data, as: UTF8.self))
            }
            guard !input.isEmpty else { throw ValidationErrorMessage("--prompt-file \(promptFile) holds no tokens") }
        } else {
            input = try textTokenizer().encode(prompt ?? "")
        }
        let began = Date()
        var decoder = TokenPrinter(tokenizer: tokenizer, prompt: input)
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

/// Text of generated tokens as they come: bytes with escapes for the byte tokenizer (no
/// tokenizer.json), else the model's tokenizer's incremental decoding.
struct TokenPrinter {
    var bytes = ByteStreamDecoder()
    var text: IncrementalDetokenizer?

    init(tokenizer: (any TextTokenizer)?, prompt: [Int32]) {
        if let tokenizer, !(tokenizer is ByteTokenizer) { text = IncrementalDetokenizer(tokenizer: tokenizer, context: prompt) }
    }

    mutating func push(_ token: Int32) -> String {
        guard var t = text else { return bytes.push(token) }
        defer { text = t }
        return t.push(token)
    }

    mutating func flush() -> String {
        guard var t = text else { return bytes.flush() }
        defer { text = t }
        return t.flush()
    }
}
