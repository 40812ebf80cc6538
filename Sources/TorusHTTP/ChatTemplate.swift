/// Built-in chat templates (Torus does not run Jinja): the common formats by name, detected
/// from a model's `chat_template` text where possible.
public enum ChatTemplate: String, Sendable, CaseIterable {
    case chatml
    case llama3

    /// One chat message.
    public struct Message: Sendable {
        public var role: String
        public var content: String
        public init(role: String, content: String) {
            self.role = role
            self.content = content
        }
    }

    /// The template a Jinja `chat_template` text implements, when it is one of the built-ins.
    public static func detect(jinja: String) -> ChatTemplate? {
        if jinja.contains("<|im_start|>") { return .chatml }
        if jinja.contains("<|start_header_id|>") { return .llama3 }
        return nil
    }

    /// The prompt text for `messages`, ending where the assistant's reply starts.
    public func render(_ messages: [Message]) -> String {
        switch self {
        case .chatml:
            return messages.map { "<|im_start|>\($0.role)\n\($0.content)<|im_end|>\n" }.joined() + "<|im_start|>assistant\n"
        case .llama3:
            return "<|begin_of_text|>" + messages.map { "<|start_header_id|>\($0.role)<|end_header_id|>\n\n\($0.content)<|eot_id|>" }.joined()
                + "<|start_header_id|>assistant<|end_header_id|>\n\n"
        }
    }

    /// The text that ends an assistant turn (a stop string for models whose tokenizer has no
    /// special token for it, such as byte models).
    public var endOfTurn: String {
        switch self {
        case .chatml: return "<|im_end|>"
        case .llama3: return "<|eot_id|>"
        }
    }
}
