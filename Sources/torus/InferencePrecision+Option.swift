import ArgumentParser
import TorusModel

extension InferencePrecision {
    /// The precision a `--dtype` (or `flag`) option names; a validation error naming the flag otherwise.
    init(option: String, flag: String = "--dtype") throws {
        guard let precision = InferencePrecision(name: option) else {
            throw ValidationError("\(flag) \(option): expected float32 or bfloat16")
        }
        self = precision
    }
}
