import Foundation
import TorusTensor

/// How the next token is chosen from logits.
public struct SamplingOptions: Sendable, Equatable {
    /// 0 means greedy (arg-max).
    public var temperature: Float
    /// Nucleus sampling: keep the smallest set of tokens whose probability reaches `topP`.
    public var topP: Float
    /// Keep only the `topK` most likely tokens before nucleus sampling; 0 keeps all.
    public var topK: Int
    public var seed: UInt64

    public init(temperature: Float = 0, topP: Float = 1, topK: Int = 0, seed: UInt64 = 0) {
        self.temperature = temperature
        self.topP = topP
        self.topK = topK
        self.seed = seed
    }
}

/// Picks tokens from logits rows, reproducibly for a given seed.
public struct Sampler {
    public let options: SamplingOptions
    private var rng: SeededGenerator

    public init(options: SamplingOptions) {
        self.options = options
        self.rng = SeededGenerator(seed: options.seed)
    }

    /// The chosen token id for one logits row of `vocab` values.
    public mutating func next(logits: UnsafePointer<Float>, vocab: Int) -> Int32 {
        if options.temperature <= 0 {
            var best = 0
            for j in 1..<vocab where logits[j] > logits[best] { best = j }
            return Int32(best)
        }
        var m = -Float.infinity
        for j in 0..<vocab { m = max(m, logits[j]) }
        var probs = (0..<vocab).map { (index: $0, p: Double(expf((logits[$0] - m) / options.temperature))) }
        probs.sort { $0.p > $1.p }
        let limit = options.topK > 0 ? min(options.topK, probs.count) : probs.count
        var kept = 0, mass = 0.0
        let total = probs[0..<limit].reduce(0) { $0 + $1.p }
        while kept < limit {
            mass += probs[kept].p / total
            kept += 1
            if mass >= Double(options.topP) { break }
        }
        let keptMass = probs[0..<kept].reduce(0) { $0 + $1.p }
        var u = rng.nextUniform() * keptMass
        for i in 0..<kept {
            u -= probs[i].p
            if u <= 0 { return Int32(probs[i].index) }
        }
        return Int32(probs[kept - 1].index)
    }
}

extension LlamaModel {
    /// Generates up to `maxNewTokens` tokens after `prompt` with a KV cache, stopping early
    /// at `stopToken`. Calls `onToken` with each new token as it is chosen.
    public func generate(prompt: [Int32], maxNewTokens: Int, options: SamplingOptions = .init(),
                         stopToken: Int32? = nil, onToken: ((Int32) -> Void)? = nil) throws -> [Int32] {
        guard !prompt.isEmpty else { throw ModelInputError.shapeMismatch("the prompt is empty") }
        let cache = KVCache(config: config, capacity: min(config.maxPositionEmbeddings, prompt.count + maxNewTokens))
        var sampler = Sampler(options: options)
        var out: [Int32] = []
        var logits = try forward(tokens: prompt, cache: cache, lastOnly: true)
        while out.count < maxNewTokens {
            let next = sampler.next(logits: logits.pointer, vocab: config.vocabSize)
            out.append(next)
            onToken?(next)
            if next == stopToken || cache.length >= cache.capacity { break }
            logits = try forward(tokens: [next], cache: cache)
        }
        withExtendedLifetime(logits) {}
        return out
    }
}
