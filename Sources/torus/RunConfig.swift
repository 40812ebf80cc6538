import Foundation
import TorusModel
import Yams

/// A problem with a YAML config, naming the file and the key.
struct ConfigError: Error, CustomStringConvertible {
    let file: String
    let message: String
    var description: String { "config \(file): \(message)" }
}

/// The contents of a `configs/*.yaml` file.
struct RunConfig {
    var model: LlamaConfig
    var seed: UInt64

    static let topLevelKeys = ["model", "seed"]

    static func load(path: String) throws -> RunConfig {
        guard let text = try? String(contentsOfFile: path, encoding: .utf8) else {
            throw ConfigError(file: path, message: "cannot read the file")
        }
        let root: Any?
        do { root = try Yams.load(yaml: text) } catch {
            throw ConfigError(file: path, message: "not valid YAML: \(error)")
        }
        guard let map = root as? [String: Any] else { throw ConfigError(file: path, message: "the top level must be a mapping") }
        for key in map.keys where !topLevelKeys.contains(key) {
            throw ConfigError(file: path, message: "unknown key '\(key)' (known: \(topLevelKeys.joined(separator: ", ")))")
        }
        guard let modelMap = map["model"] as? [String: Any] else {
            throw ConfigError(file: path, message: "missing mapping 'model'")
        }
        for key in modelMap.keys where !LlamaConfig.knownKeys.contains(key) {
            throw ConfigError(file: path, message: "unknown key 'model.\(key)' (known: \(LlamaConfig.knownKeys.joined(separator: ", ")))")
        }
        let model: LlamaConfig
        do {
            let json = try JSONSerialization.data(withJSONObject: modelMap)
            model = try JSONDecoder().decode(LlamaConfig.self, from: json)
            try model.validate()
        } catch let e as ModelConfigError {
            throw ConfigError(file: path, message: e.description)
        } catch let DecodingError.keyNotFound(key, _) {
            throw ConfigError(file: path, message: "missing key 'model.\(key.stringValue)'")
        } catch let DecodingError.typeMismatch(_, ctx) {
            throw ConfigError(file: path, message: "wrong type for 'model.\(ctx.codingPath.map(\.stringValue).joined(separator: "."))'")
        } catch {
            throw ConfigError(file: path, message: "\(error)")
        }
        var seed: UInt64 = 0
        if let s = map["seed"] {
            guard let v = s as? Int, v >= 0 else { throw ConfigError(file: path, message: "'seed' must be a non-negative integer") }
            seed = UInt64(v)
        }
        return RunConfig(model: model, seed: seed)
    }
}
