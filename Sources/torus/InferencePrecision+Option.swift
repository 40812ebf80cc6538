import ArgumentParser
import TorusModel

extension InferencePrecision {
    /// The precision a `--dtype` flag names (vLLM's names; `bf16` and `fp32` too).
    init(option: String) throws {
        switch option.lowercased() {
        case "float32", "fp32", "float": self = .float32
        case "bfloat16", "bf16": self = .bfloat16
        default: throw ValidationError("--dtype \(option): expected float32 or bfloat16")
        }
    }
}
