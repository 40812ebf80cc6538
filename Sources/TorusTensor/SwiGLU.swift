import Foundation

/// The gated activation of LLaMA's MLP: `m = silu(g) * u`.
public enum SwiGLU {
    /// Elements per parallel item: fewer run on the calling thread.
    static let elementsPerTask = 16_384

    /// `out = silu(gate) * up` over `count` elements, split over the threads when there are many.
    public static func forward(gate: UnsafePointer<Float>, up: UnsafePointer<Float>, out: UnsafeMutablePointer<Float>, count: Int) {
        guard count > elementsPerTask else { return forward(gate, up, out, 0..<count) }
        Parallel.forEach((count + elementsPerTask - 1) / elementsPerTask) { t in
            forward(gate, up, out, (t * elementsPerTask)..<min(count, (t + 1) * elementsPerTask))
        }
    }

    private static func forward(_ gate: UnsafePointer<Float>, _ up: UnsafePointer<Float>, _ out: UnsafeMutablePointer<Float>, _ range: Range<Int>) {
        VectorMath.sigmoid(gate + range.lowerBound, out + range.lowerBound, count: range.count)
        for i in range { out[i] = gate[i] * out[i] * up[i] }
    }

    /// Gradients of gate and up (overwritten) from the gradient of the output.
    public static func backward(gate: UnsafePointer<Float>, up: UnsafePointer<Float>, dOut: UnsafePointer<Float>,
                                dGate: UnsafeMutablePointer<Float>, dUp: UnsafeMutablePointer<Float>, count: Int) {
        VectorMath.sigmoid(gate, dGate, count: count)
        for i in 0..<count {
            let g = gate[i], s = dGate[i]
            dUp[i] = dOut[i] * g * s
            dGate[i] = dOut[i] * up[i] * s * (1 + g * (1 - s))
        }
    }
}
