import Foundation

/// Log-probabilities of the model's raw distribution (log-softmax of the logits, before
/// temperature or truncation), as vLLM reports them by default.
enum Logprobs {
    static func of(token: Int32, logits: UnsafePointer<Float>, vocab: Int, top: Int) -> TokenLogprobs {
        var m = -Float.infinity
        for j in 0..<vocab { m = max(m, logits[j]) }
        var sum = 0.0
        for j in 0..<vocab { sum += Foundation.exp(Double(logits[j] - m)) }
        let logZ = Double(m) + Foundation.log(sum)
        func lp(_ j: Int) -> Float { Float(Double(logits[j]) - logZ) }
        var best: [(token: Int32, logprob: Float)] = []
        if top > 0 {
            // Partial selection: keep the `top` largest in order.
            for j in 0..<vocab {
                let v = logits[j]
                if best.count < top || v > logits[Int(best[best.count - 1].token)] {
                    let at = best.firstIndex { v > logits[Int($0.token)] } ?? best.count
                    best.insert((Int32(j), 0), at: at)
                    if best.count > top { best.removeLast() }
                }
            }
            best = best.map { ($0.token, lp(Int($0.token))) }
        }
        return TokenLogprobs(logprob: lp(Int(token)), top: best)
    }
}
