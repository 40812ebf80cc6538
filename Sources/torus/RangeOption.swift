import ArgumentParser

/// A "MIN-MAX" command-line option.
enum RangeOption {
    /// `text` as a range of positive integers, or an error naming `option` and showing `example`.
    static func parse(_ text: String, option: String, example: String) throws -> ClosedRange<Int> {
        let parts = text.split(separator: "-").compactMap { Int($0) }
        guard parts.count == 2, parts[0] >= 1, parts[0] <= parts[1] else {
            throw ValidationError("\(option) must be MIN-MAX with 1 <= MIN <= MAX (e.g. \(example)), not '\(text)'")
        }
        return parts[0]...parts[1]
    }
}
