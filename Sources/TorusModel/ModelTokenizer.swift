import Foundation

/// The tokenizer of a model directory.
public enum ModelTokenizer {
    /// The directory's tokenizer: `tokenizer.json` when present, else the byte tokenizer
    /// (which needs a vocabulary of at least 256).
    public static func load(directory: String, vocabularySize: Int) throws -> any TextTokenizer {
        let path = (directory as NSString).appendingPathComponent("tokenizer.json")
        if FileManager.default.fileExists(atPath: path) {
            return try TokenizerJSON.load(path: path, modelVocabulary: vocabularySize)
        }
        guard vocabularySize >= ByteTokenizer.vocabularyFloor else {
            throw TokenizerError(file: path, message: "the directory has no tokenizer.json and vocab_size \(vocabularySize) is too small "
                + "for the byte tokenizer (256)")
        }
        return ByteTokenizer()
    }

    /// The Jinja `chat_template` of the directory's `tokenizer_config.json`, if any.
    public static func chatTemplate(directory: String) -> String? {
        let path = (directory as NSString).appendingPathComponent("tokenizer_config.json")
        guard let data = FileManager.default.contents(atPath: path),
              let object = (try? JSONSerialization.jsonObject(with: data)) as? [String: Any] else { return nil }
        if let s = object["chat_template"] as? String { return s }
        if let list = object["chat_template"] as? [[String: Any]] {
            return list.first { ($0["name"] as? String) == "default" }?["template"] as? String
        }
        return nil
    }
}

/// A tokenizer file Torus cannot use, naming the file and what is wrong.
public struct TokenizerError: Error, CustomStringConvertible {
    public let file: String
    public let message: String
    public init(file: String, message: String) {
        self.file = file
        self.message = message
    }
    public var description: String { "tokenizer \(file): \(message)" }
}
