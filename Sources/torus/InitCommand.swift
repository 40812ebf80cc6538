import ArgumentParser
import Foundation
import TorusModel

struct InitCommand: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "init",
        abstract: "Write a freshly initialised model as a Hugging Face directory.")

    @Option(help: "YAML config with a 'model' section (see configs/).") var config: String
    @Option(help: "Output directory (replaced atomically).") var out: String
    @Option(help: "Seed for the initial weights (default: the config's seed).") var seed: UInt64?

    func run() throws {
        let cfg = try RunConfig.load(path: config)
        let model = try LlamaModel.initialized(config: cfg.model, seed: seed ?? cfg.seed)
        try HFCheckpoint.save(model, to: out)
        print("wrote \(out): \(model.config.parameterCount) parameters, \(model.config.numHiddenLayers) layers, d=\(model.config.hiddenSize)")
    }
}
