import Foundation
import TorusModel
import TorusTensor

/// A naive Double-precision LLaMA forward pass over a flat parameter vector in the same
/// layout as `ParameterStore`, written independently of the fp32 kernels.
struct ReferenceLlama {
    let config: LlamaConfig
    let entries: [ParameterEntry]

    init(model: LlamaModel) {
        config = model.config
        entries = model.parameters.entries
    }

    func slice(_ p: [Double], _ name: String) -> ArraySlice<Double> {
        let e = entries.first { $0.name == name }!
        return p[e.offset..<(e.offset + e.count)]
    }

    /// y[rows, out] = x[rows, in] W^T
    func linear(_ x: [Double], _ w: ArraySlice<Double>, rows: Int, inF: Int, outF: Int) -> [Double] {
        var y = [Double](repeating: 0, count: rows * outF)
        let wb = w.startIndex
        for r in 0..<rows { for o in 0..<outF {
            var s = 0.0
            for i in 0..<inF { s += x[r * inF + i] * w[wb + o * inF + i] }
            y[r * outF + o] = s
        } }
        return y
    }

    func norm(_ x: [Double], _ w: ArraySlice<Double>, rows: Int) -> [Double] {
        let d = config.hiddenSize
        var y = x
        for r in 0..<rows {
            let ms = (0..<d).reduce(0.0) { $0 + x[r * d + $1] * x[r * d + $1] } / Double(d)
            let inv = 1 / (ms + config.rmsNormEps).squareRoot()
            for i in 0..<d { y[r * d + i] = x[r * d + i] * inv * w[w.startIndex + i] }
        }
        return y
    }

    func rope(_ x: [Double], rows: Int, heads: Int, seqLen: Int) -> [Double] {
        let hd = config.resolvedHeadDim, half = hd / 2
        var y = x
        for r in 0..<rows { for h in 0..<heads { for i in 0..<half {
            let pos = Double(r % seqLen)
            let a = pos / pow(config.ropeTheta, Double(2 * i) / Double(hd))
            let b = (r * heads + h) * hd
            y[b + i] = x[b + i] * cos(a) - x[b + i + half] * sin(a)
            y[b + i + half] = x[b + i + half] * cos(a) + x[b + i] * sin(a)
        } } }
        return y
    }

    /// Logits [batch * seqLen, vocab].
    func logits(_ p: [Double], tokens: [Int32], batch: Int, seqLen: Int) -> [Double] {
        let c = config, d = c.hiddenSize, hd = c.resolvedHeadDim, hq = c.numAttentionHeads, hkv = c.numKeyValueHeads
        let rows = batch * seqLen, f = c.intermediateSize
        let emb = slice(p, "model.embed_tokens.weight")
        var x = [Double](repeating: 0, count: rows * d)
        for (r, t) in tokens.enumerated() { for i in 0..<d { x[r * d + i] = emb[emb.startIndex + Int(t) * d + i] } }
        for l in 0..<c.numHiddenLayers {
            let pre = "model.layers.\(l)."
            let h = norm(x, slice(p, pre + "input_layernorm.weight"), rows: rows)
            let q = rope(linear(h, slice(p, pre + "self_attn.q_proj.weight"), rows: rows, inF: d, outF: hq * hd), rows: rows, heads: hq, seqLen: seqLen)
            let k = rope(linear(h, slice(p, pre + "self_attn.k_proj.weight"), rows: rows, inF: d, outF: hkv * hd), rows: rows, heads: hkv, seqLen: seqLen)
            let v = linear(h, slice(p, pre + "self_attn.v_proj.weight"), rows: rows, inF: d, outF: hkv * hd)
            var o = [Double](repeating: 0, count: rows * hq * hd)
            for b in 0..<batch { for head in 0..<hq {
                let g = head / (hq / hkv)
                for i in 0..<seqLen {
                    var s = [Double](repeating: 0, count: i + 1)
                    for j in 0...i {
                        var acc = 0.0
                        for e in 0..<hd { acc += q[((b * seqLen + i) * hq + head) * hd + e] * k[((b * seqLen + j) * hkv + g) * hd + e] }
                        s[j] = acc / Double(hd).squareRoot()
                    }
                    let m = s.max()!
                    let z = s.reduce(0) { $0 + exp($1 - m) }
                    for j in 0...i {
                        let w = exp(s[j] - m) / z
                        for e in 0..<hd { o[((b * seqLen + i) * hq + head) * hd + e] += w * v[((b * seqLen + j) * hkv + g) * hd + e] }
                    }
                }
            } }
            let a = linear(o, slice(p, pre + "self_attn.o_proj.weight"), rows: rows, inF: hq * hd, outF: d)
            for i in 0..<x.count { x[i] += a[i] }
            let h2 = norm(x, slice(p, pre + "post_attention_layernorm.weight"), rows: rows)
            let gate = linear(h2, slice(p, pre + "mlp.gate_proj.weight"), rows: rows, inF: d, outF: f)
            let up = linear(h2, slice(p, pre + "mlp.up_proj.weight"), rows: rows, inF: d, outF: f)
            let act = zip(gate, up).map { $0 / (1 + exp(-$0)) * $1 }
            let down = linear(act, slice(p, pre + "mlp.down_proj.weight"), rows: rows, inF: f, outF: d)
            for i in 0..<x.count { x[i] += down[i] }
        }
        let hn = norm(x, slice(p, "model.norm.weight"), rows: rows)
        let head = c.tieWordEmbeddings ? emb : slice(p, "lm_head.weight")
        return linear(hn, head, rows: rows, inF: d, outF: c.vocabSize)
    }

    func loss(_ p: [Double], tokens: [Int32], targets: [Int32], batch: Int, seqLen: Int) -> Double {
        let lg = logits(p, tokens: tokens, batch: batch, seqLen: seqLen)
        let v = config.vocabSize
        var total = 0.0
        for r in 0..<targets.count {
            let row = lg[(r * v)..<((r + 1) * v)]
            let m = row.max()!
            total += m + log(row.reduce(0) { $0 + exp($1 - m) }) - row[row.startIndex + Int(targets[r])]
        }
        return total / Double(targets.count)
    }
}
