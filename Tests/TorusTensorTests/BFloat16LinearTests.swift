import Testing
import TorusTensor

@Suite struct BFloat16LinearTests {
    @Test func roundsToNearestEven() {
        let ulp = Float(1) / 128  // bfloat16 spacing in [1, 2)
        #expect(BFloat16Linear.rounded(1 + ulp / 2) == 1)                    // tie: down to the even mantissa
        #expect(BFloat16Linear.rounded(1 + 3 * ulp / 2) == 1 + 2 * ulp)      // tie: up to the even mantissa
        #expect(BFloat16Linear.rounded(1 + ulp / 2 + ulp / 4096) == 1 + ulp) // past the tie
        #expect(BFloat16Linear.rounded(-3.0) == -3.0)
        #expect(BFloat16Linear.rounded(.infinity) == .infinity)
        #expect(BFloat16Linear.rounded(.nan).isNaN)
    }

    /// Against a Double reference over the bfloat16-rounded inputs (products of bfloat16 values
    /// are exact in fp32, so only the fp32 summation differs), with shapes that leave partial
    /// 16-output panels, an odd input width, one to forty rows, and accumulation.
    @Test(arguments: [(1, 7, 5), (3, 64, 33), (6, 130, 48), (13, 96, 17), (40, 65, 70)])
    func matchesTheReferenceOnRoundedInputs(rows: Int, inFeatures: Int, outFeatures: Int) {
        let x = Ref.random(rows * inFeatures, seed: 1).map(Float.init)
        let w = Ref.random(outFeatures * inFeatures, seed: 2, scale: 0.1).map(Float.init)
        let start = Ref.random(rows * outFeatures, seed: 3).map(Float.init)
        let layer = w.withUnsafeBufferPointer { BFloat16Linear(weight: $0.baseAddress!, outFeatures: outFeatures, inFeatures: inFeatures) }
        for accumulate in [false, true] {
            var y = start
            x.withUnsafeBufferPointer { xp in
                y.withUnsafeMutableBufferPointer { layer.forward(x: xp.baseAddress!, y: $0.baseAddress!, rows: rows, accumulate: accumulate) }
            }
            var worst = 0.0
            for r in 0..<rows {
                for o in 0..<outFeatures {
                    var sum = accumulate ? Double(start[r * outFeatures + o]) : 0, magnitude = abs(sum)
                    for k in 0..<inFeatures {
                        let p = Double(BFloat16Linear.rounded(x[r * inFeatures + k])) * Double(BFloat16Linear.rounded(w[o * inFeatures + k]))
                        sum += p; magnitude += abs(p)
                    }
                    worst = max(worst, abs(Double(y[r * outFeatures + o]) - sum) / max(magnitude, 1e-30))
                }
            }
            // Measured: at most 1.4e-7 (fp32 summation order).
            #expect(worst < 1e-6, "rows \(rows), in \(inFeatures), out \(outFeatures), accumulate \(accumulate): relative error \(worst)")
        }
    }

    /// Against fp32 weights and inputs: the error bfloat16 rounding brings (8 significant bits).
    @Test func staysNearTheFloat32Product() {
        let rows = 9, inFeatures = 256, outFeatures = 96
        let x = Ref.random(rows * inFeatures, seed: 4).map(Float.init)
        let w = Ref.random(outFeatures * inFeatures, seed: 5, scale: 0.05).map(Float.init)
        let layer = w.withUnsafeBufferPointer { BFloat16Linear(weight: $0.baseAddress!, outFeatures: outFeatures, inFeatures: inFeatures) }
        var y = [Float](repeating: 0, count: rows * outFeatures), exact = y
        x.withUnsafeBufferPointer { xp in
            y.withUnsafeMutableBufferPointer { layer.forward(x: xp.baseAddress!, y: $0.baseAddress!, rows: rows) }
            w.withUnsafeBufferPointer { wp in
                exact.withUnsafeMutableBufferPointer {
                    Linear.forward(x: xp.baseAddress!, weight: wp.baseAddress!, y: $0.baseAddress!, rows: rows, inFeatures: inFeatures, outFeatures: outFeatures)
                }
            }
        }
        let scale = exact.map { abs($0) }.max() ?? 1
        let error = zip(y, exact).map { abs($0 - $1) }.max() ?? 0
        // Measured: 0.27% of the largest output.
        #expect(error / scale < 0.01, "bfloat16 against fp32: \(error / scale) of the largest output")
        #expect(error > 0, "the products were not rounded to bfloat16")
    }

    /// Layers that read one input (Q, K and V) run together: each output equals the layer's
    /// own product, bit for bit (the same rounded input, the same kernel tiles).
    @Test func layersOfOneInputMatchEachAlone() {
        let rows = 70, inFeatures = 96, outs = [80, 48, 33]
        let x = Ref.random(rows * inFeatures, seed: 6).map(Float.init)
        let layers = outs.enumerated().map { i, o in
            Ref.random(o * inFeatures, seed: UInt64(10 + i), scale: 0.1).map(Float.init)
                .withUnsafeBufferPointer { BFloat16Linear(weight: $0.baseAddress!, outFeatures: o, inFeatures: inFeatures) }
        }
        let together = outs.map { UnsafeMutablePointer<Float>.allocate(capacity: rows * $0) }
        defer { together.forEach { $0.deallocate() } }
        x.withUnsafeBufferPointer { xp in
            BFloat16Linear.forward(Array(zip(layers, together)).map { (layer: $0.0, y: $0.1) }, x: xp.baseAddress!, rows: rows)
            for (i, layer) in layers.enumerated() {
                var alone = [Float](repeating: 0, count: rows * outs[i])
                alone.withUnsafeMutableBufferPointer { layer.forward(x: xp.baseAddress!, y: $0.baseAddress!, rows: rows) }
                #expect(Array(UnsafeBufferPointer(start: together[i], count: rows * outs[i])) == alone, "layer \(i)")
            }
        }
    }
}
