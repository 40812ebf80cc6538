import Foundation
import TorusTensor

/// Double-precision reference implementations and finite differences for kernel tests.
enum Ref {
    static func random(_ n: Int, seed: UInt64, scale: Double = 1) -> [Double] {
        var g = SeededGenerator(seed: seed)
        return (0..<n).map { _ in g.nextNormal() * scale }
    }

    static func tensor(_ values: [Double], _ shape: [Int]) -> Tensor {
        Tensor(shape: shape, values: values.map(Float.init))
    }

    /// Central differences of a scalar function of `x`.
    static func numericGradient(_ x: [Double], eps: Double = 1e-6, _ f: ([Double]) -> Double) -> [Double] {
        var x = x
        var g = [Double](repeating: 0, count: x.count)
        for i in 0..<x.count {
            let old = x[i]
            x[i] = old + eps; let fp = f(x)
            x[i] = old - eps; let fm = f(x)
            x[i] = old
            g[i] = (fp - fm) / (2 * eps)
        }
        return g
    }

    /// max |a - b| / max(1, max |b|).
    static func relativeError(_ a: [Float], _ b: [Double]) -> Double {
        precondition(a.count == b.count, "compared \(a.count) with \(b.count) values")
        var err = 0.0, scale = 1e-12
        for i in 0..<a.count {
            err = max(err, abs(Double(a[i]) - b[i]))
            scale = max(scale, abs(b[i]))
        }
        return err / max(scale, 1)
    }

    static func dot(_ a: [Double], _ b: [Double]) -> Double { zip(a, b).reduce(0) { $0 + $1.0 * $1.1 } }

    // MARK: Forward references

    static func rmsNorm(_ x: [Double], _ w: [Double], rows: Int, dim: Int, eps: Double) -> [Double] {
        var y = x
        for r in 0..<rows {
            let ms = (0..<dim).reduce(0.0) { $0 + x[r * dim + $1] * x[r * dim + $1] } / Double(dim)
            let inv = 1 / (ms + eps).squareRoot()
            for i in 0..<dim { y[r * dim + i] = x[r * dim + i] * inv * w[i] }
        }
        return y
    }

    static func rotary(_ x: [Double], rows: Int, heads: Int, headDim: Int, positions: [Int], theta: Double) -> [Double] {
        var y = x
        let half = headDim / 2
        for r in 0..<rows {
            for h in 0..<heads {
                let base = (r * heads + h) * headDim
                for i in 0..<half {
                    let freq = 1 / pow(theta, Double(2 * i) / Double(headDim))
                    let a = Double(positions[r]) * freq
                    let x1 = x[base + i], x2 = x[base + i + half]
                    y[base + i] = x1 * cos(a) - x2 * sin(a)
                    y[base + i + half] = x2 * cos(a) + x1 * sin(a)
                }
            }
        }
        return y
    }

    static func swiglu(_ g: [Double], _ u: [Double]) -> [Double] {
        zip(g, u).map { $0 / (1 + exp(-$0)) * $1 }
    }

    static func crossEntropy(_ logits: [Double], targets: [Int32], vocab: Int) -> Double {
        var total = 0.0, valid = 0
        for (r, t) in targets.enumerated() where t != CrossEntropy.ignoreIndex {
            let row = Array(logits[(r * vocab)..<((r + 1) * vocab)])
            let m = row.max()!
            let lse = m + log(row.reduce(0) { $0 + exp($1 - m) })
            total += lse - row[Int(t)]
            valid += 1
        }
        return total / Double(max(valid, 1))
    }

    /// Softmax attention; returns output [nq, hq*d] and lse [nq, hq] (lse -inf, output 0 for
    /// rows that see no key).
    static func attention(q: [Double], k: [Double], v: [Double], nq: Int, nk: Int, hq: Int, hkv: Int, d: Int,
                          causal: Bool, qOff: Int = 0, kOff: Int = 0) -> (out: [Double], lse: [Double]) {
        var out = [Double](repeating: 0, count: nq * hq * d)
        var lse = [Double](repeating: -.infinity, count: nq * hq)
        let scale = 1 / Double(d).squareRoot()
        for h in 0..<hq {
            let g = h / (hq / hkv)
            for i in 0..<nq {
                var scores: [(Int, Double)] = []
                for j in 0..<nk where !causal || kOff + j <= qOff + i {
                    var s = 0.0
                    for c in 0..<d { s += q[(i * hq + h) * d + c] * k[(j * hkv + g) * d + c] }
                    scores.append((j, s * scale))
                }
                if scores.isEmpty { continue }
                let m = scores.map(\.1).max()!
                let sum = scores.reduce(0) { $0 + exp($1.1 - m) }
                lse[i * hq + h] = m + log(sum)
                for (j, s) in scores {
                    let p = exp(s - m) / sum
                    for c in 0..<d { out[(i * hq + h) * d + c] += p * v[(j * hkv + g) * d + c] }
                }
            }
        }
        return (out, lse)
    }
}
