import ArgumentParser
import TorusModel

extension InferencePrecision {
    /// The precision a `--dtype` flag names; a validation error naming the flag otherwise.
    init(option: String) throws {
        guard let precision = InferencePrecision(name: option) else {
            throw ValidationError("--dtype \(option): expected float32 or bfloat16")
        }
        self = precision
    }
}
