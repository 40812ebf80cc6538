import Foundation
import Testing
import TorusTensor

/// Every kernel's forward against a Double reference and its backward against central
/// finite differences of that reference (loss = sum(output * R) for a fixed random R).
@Suite struct KernelGradientTests {
    @Test func linearMatchesReferenceAndFiniteDifferences() {
        let rows = 3, inF = 5, outF = 4
        let x = Ref.random(rows * inF, seed: 1), w = Ref.random(outF * inF, seed: 2), r = Ref.random(rows * outF, seed: 3)
        func ref(_ x: [Double], _ w: [Double]) -> [Double] {
            (0..<(rows * outF)).map { idx in
                let i = idx / outF, o = idx % outF
                return (0..<inF).reduce(0.0) { $0 + x[i * inF + $1] * w[o * inF + $1] }
            }
        }
        let xt = Ref.tensor(x, [rows, inF]), wt = Ref.tensor(w, [outF, inF]), y = Tensor(zeros: [rows, outF])
        Linear.forward(x: xt.pointer, weight: wt.pointer, y: y.pointer, rows: rows, inFeatures: inF, outFeatures: outF)
        #expect(Ref.relativeError(y.array, ref(x, w)) < 1e-5)
        let dy = Ref.tensor(r, [rows, outF]), dx = Tensor(zeros: [rows, inF]), dw = Tensor(zeros: [outF, inF])
        Linear.backward(x: xt.pointer, weight: wt.pointer, dy: dy.pointer, dx: dx.pointer, dWeight: dw.pointer,
                        rows: rows, inFeatures: inF, outFeatures: outF)
        #expect(Ref.relativeError(dx.array, Ref.numericGradient(x) { Ref.dot(ref($0, w), r) }) < 1e-5)
        #expect(Ref.relativeError(dw.array, Ref.numericGradient(w) { Ref.dot(ref(x, $0), r) }) < 1e-5)
    }

    /// Every path of `Linear.forward` (a matrix-vector product per row, the weights-once
    /// kernel of a few rows, sgemm) against the Double reference, with tails in both the
    /// input (not a multiple of the vector width) and the outputs (not a multiple of a tile).
    @Test(arguments: [1, 2, 3, 5, 8, 11, 13, 24, 33, 40])
    func linearPathsMatchReferenceForAnyRowCount(rows: Int) {
        let inF = 37, outF = 50
        let x = Ref.random(rows * inF, seed: 11), w = Ref.random(outF * inF, seed: 12), prior = Ref.random(rows * outF, seed: 13)
        let expected = (0..<(rows * outF)).map { idx in
            (0..<inF).reduce(0.0) { $0 + x[(idx / outF) * inF + $1] * w[(idx % outF) * inF + $1] }
        }
        let xt = Ref.tensor(x, [rows, inF]), wt = Ref.tensor(w, [outF, inF])
        let paths: [(String, (Tensor, Bool) -> Void)] = [
            ("forward", { Linear.forward(x: xt.pointer, weight: wt.pointer, y: $0.pointer, rows: rows, inFeatures: inF, outFeatures: outF, accumulate: $1) }),
            ("few rows", { Linear.forwardFewRows(x: xt.pointer, weight: wt.pointer, y: $0.pointer, rows: rows, inFeatures: inF, outFeatures: outF, accumulate: $1) }),
            ("sgemm", { Linear.forwardBLAS(x: xt.pointer, weight: wt.pointer, y: $0.pointer, rows: rows, inFeatures: inF, outFeatures: outF, accumulate: $1) }),
            ("sgemv", { Linear.forwardBLAS(x: xt.pointer, weight: wt.pointer, y: $0.pointer, rows: rows, inFeatures: inF, outFeatures: outF,
                                           accumulate: $1, perRow: true) }),
        ]
        for (name, run) in paths {
            let y = Ref.tensor(prior, [rows, outF])
            run(y, false)
            #expect(Ref.relativeError(y.array, expected) < 1e-5, "\(name), \(rows) rows")
            let z = Ref.tensor(prior, [rows, outF])
            run(z, true)
            #expect(Ref.relativeError(z.array, zip(expected, prior).map { $0 + $1 }) < 1e-5, "\(name) accumulating, \(rows) rows")
        }
    }

    @Test func rmsNormMatchesReferenceAndFiniteDifferences() {
        let rows = 3, dim = 8, eps = 1e-5
        let x = Ref.random(rows * dim, seed: 4), w = Ref.random(dim, seed: 5), r = Ref.random(rows * dim, seed: 6)
        let xt = Ref.tensor(x, [rows, dim]), wt = Ref.tensor(w, [dim])
        let y = Tensor(zeros: [rows, dim]), rstd = Tensor(zeros: [rows])
        RMSNorm.forward(x: xt.pointer, weight: wt.pointer, y: y.pointer, rstd: rstd.pointer, rows: rows, dim: dim, eps: Float(eps))
        #expect(Ref.relativeError(y.array, Ref.rmsNorm(x, w, rows: rows, dim: dim, eps: eps)) < 1e-5)
        let dx = Tensor(zeros: [rows, dim]), dw = Tensor(zeros: [dim]), dy = Ref.tensor(r, [rows, dim])
        RMSNorm.backward(x: xt.pointer, weight: wt.pointer, rstd: rstd.pointer, dy: dy.pointer, dx: dx.pointer,
                         dWeight: dw.pointer, rows: rows, dim: dim)
        let fdx = Ref.numericGradient(x) { Ref.dot(Ref.rmsNorm($0, w, rows: rows, dim: dim, eps: eps), r) }
        let fdw = Ref.numericGradient(w) { Ref.dot(Ref.rmsNorm(x, $0, rows: rows, dim: dim, eps: eps), r) }
        #expect(Ref.relativeError(dx.array, fdx) < 1e-4)
        #expect(Ref.relativeError(dw.array, fdw) < 1e-4)
    }

    @Test func rotaryMatchesReferenceAndFiniteDifferences() {
        let rows = 4, heads = 2, d = 8, theta = 500000.0
        let positions = [0, 3, 7, 100]
        let x = Ref.random(rows * heads * d, seed: 7), r = Ref.random(rows * heads * d, seed: 8)
        let table = RotaryTable(headDim: d, theta: theta, capacity: 128)
        let pos = positions.map(Int32.init)
        let xt = Ref.tensor(x, [rows, heads * d])
        pos.withUnsafeBufferPointer { table.apply(xt.pointer, rows: rows, heads: heads, positions: $0.baseAddress!) }
        #expect(Ref.relativeError(xt.array, Ref.rotary(x, rows: rows, heads: heads, headDim: d, positions: positions, theta: theta)) < 1e-5)
        let dy = Ref.tensor(r, [rows, heads * d])
        pos.withUnsafeBufferPointer { table.apply(dy.pointer, rows: rows, heads: heads, positions: $0.baseAddress!, inverse: true) }
        let fd = Ref.numericGradient(x) { Ref.dot(Ref.rotary($0, rows: rows, heads: heads, headDim: d, positions: positions, theta: theta), r) }
        #expect(Ref.relativeError(dy.array, fd) < 1e-5)
    }

    @Test func rotaryShiftEqualsRotationAtTheNewPosition() {
        let d = 8, table = RotaryTable(headDim: d, theta: 10000, capacity: 64)
        let x = Ref.random(d, seed: 9)
        let atFive = Ref.tensor(x, [1, d]), atTwelve = Ref.tensor(x, [1, d])
        [Int32(5)].withUnsafeBufferPointer { table.apply(atFive.pointer, rows: 1, heads: 1, positions: $0.baseAddress!) }
        [Int32(12)].withUnsafeBufferPointer { table.apply(atTwelve.pointer, rows: 1, heads: 1, positions: $0.baseAddress!) }
        table.shift(atFive.pointer, rows: 1, heads: 1, by: 7)
        #expect(Ref.relativeError(atFive.array, atTwelve.array.map(Double.init)) < 1e-5)
    }

    @Test func swigluMatchesReferenceAndFiniteDifferences() {
        let n = 12
        let g = Ref.random(n, seed: 10, scale: 2), u = Ref.random(n, seed: 11), r = Ref.random(n, seed: 12)
        let gt = Ref.tensor(g, [n]), ut = Ref.tensor(u, [n]), out = Tensor(zeros: [n])
        SwiGLU.forward(gate: gt.pointer, up: ut.pointer, out: out.pointer, count: n)
        #expect(Ref.relativeError(out.array, Ref.swiglu(g, u)) < 1e-5)
        let dg = Tensor(zeros: [n]), du = Tensor(zeros: [n]), dy = Ref.tensor(r, [n])
        SwiGLU.backward(gate: gt.pointer, up: ut.pointer, dOut: dy.pointer, dGate: dg.pointer, dUp: du.pointer, count: n)
        #expect(Ref.relativeError(dg.array, Ref.numericGradient(g) { Ref.dot(Ref.swiglu($0, u), r) }) < 1e-5)
        #expect(Ref.relativeError(du.array, Ref.numericGradient(u) { Ref.dot(Ref.swiglu(g, $0), r) }) < 1e-5)
    }

    @Test func crossEntropyMatchesReferenceAndFiniteDifferences() {
        let rows = 4, vocab = 7
        let logits = Ref.random(rows * vocab, seed: 13, scale: 3)
        let targets: [Int32] = [2, CrossEntropy.ignoreIndex, 6, 0]
        let lt = Ref.tensor(logits, [rows, vocab]), dl = Tensor(zeros: [rows, vocab])
        let result = targets.withUnsafeBufferPointer {
            CrossEntropy.forward(logits: lt.pointer, targets: $0.baseAddress!, rows: rows, vocab: vocab, dLogits: dl.pointer)
        }
        #expect(result.valid == 3)
        #expect(abs(Double(result.mean) - Ref.crossEntropy(logits, targets: targets, vocab: vocab)) < 1e-5)
        let fd = Ref.numericGradient(logits) { Ref.crossEntropy($0, targets: targets, vocab: vocab) }
        #expect(Ref.relativeError(dl.array, fd) < 1e-5)
    }
}

@Suite struct VectorMathTests {
    @Test func expMatchesFoundationAcrossTheRange() {
        var worst = 0.0
        var x: Float = -87
        while x < 88 {
            let want = Foundation.exp(Double(x))
            worst = max(worst, abs(Double(VectorMath.exp(x)) - want) / want)
            x += 0.0137
        }
        #expect(worst < 5e-7, "worst relative error \(worst)")
        #expect(VectorMath.exp(-.infinity) == 0)
        #expect(VectorMath.exp(100) == .infinity)
    }

    @Test func expShiftedSumsAndHandlesTails() {
        for n in [1, 15, 16, 17, 40] {
            let values = (0..<n).map { Float($0) * 0.1 - 2 }
            let buf = Tensor(shape: [n], values: values)
            #expect(VectorMath.max(buf.pointer, count: n) == values.max())
            let sum = VectorMath.expShifted(buf.pointer, count: n, shift: 0.5)
            let want = values.map { Foundation.exp(Double($0) - 0.5) }
            #expect(Ref.relativeError(buf.array, want) < 1e-6)
            #expect(abs(Double(sum) - want.reduce(0, +)) < 1e-5 * want.reduce(0, +))
        }
        #expect(VectorMath.max(Tensor(zeros: [1]).pointer, count: 0) == -.infinity)
    }
}
