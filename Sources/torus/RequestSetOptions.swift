import ArgumentParser
import TorusTensor

/// The random request set `bench serve` and `bench throughput` share: how many requests, and
/// prompt and output lengths drawn uniformly around their means.
struct RequestSetOptions: ParsableArguments {
    @Option(help: "Requests.") var numPrompts: Int = 64
    @Option(help: "Mean prompt length, tokens.") var inputLen: Int = 256
    @Option(help: "Mean output length, tokens.") var outputLen: Int = 64
    @Option(help: "Lengths are uniform in [len*(1-r), len*(1+r)].") var rangeRatio: Double = 0

    func validate() throws {
        if numPrompts < 1 || inputLen < 1 || outputLen < 1 { throw ValidationError("--num-prompts, --input-len and --output-len must be positive") }
        if !(0..<1).contains(rangeRatio) { throw ValidationError("--range-ratio must be in [0, 1)") }
    }

    /// `numPrompts` prompts of token ids from `tokens` (a token drawn from a random number)
    /// and their output lengths, drawn from `rng` in the same order by both benchmarks.
    func draw(_ rng: inout SeededGenerator, token: (UInt64) -> Int) -> [(prompt: [Int], output: Int)] {
        func length(_ mean: Int) -> Int {
            let lo = max(1, Int(Double(mean) * (1 - rangeRatio))), hi = max(lo, Int(Double(mean) * (1 + rangeRatio)))
            return lo + Int(rng.next() % UInt64(hi - lo + 1))
        }
        return (0..<numPrompts).map { _ in
            let n = length(inputLen)
            let ids = (0..<n).map { _ in token(rng.next()) }
            return (ids, length(outputLen))
        }
    }

    /// "input I / output O tokens (range ratio R)".
    var summary: String { "input \(inputLen) / output \(outputLen) tokens (range ratio \(rangeRatio))" }
}
