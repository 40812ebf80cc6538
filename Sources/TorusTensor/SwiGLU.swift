import Foundation

/// The gated activation of LLaMA's MLP: `m = silu(g) * u`.
public enum SwiGLU {
    public static func forward(gate: UnsafePointer<Float>, up: UnsafePointer<Float>, out: UnsafeMutablePointer<Float>, count: Int) {
        VectorMath.sigmoid(gate, out, count: count)
        for i in 0..<count { out[i] = gate[i] * out[i] * up[i] }
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
