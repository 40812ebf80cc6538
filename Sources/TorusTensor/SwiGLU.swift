import Foundation

/// The gated activation of LLaMA's MLP: `m = silu(g) * u`.
public enum SwiGLU {
    public static func forward(gate: UnsafePointer<Float>, up: UnsafePointer<Float>, out: UnsafeMutablePointer<Float>, count: Int) {
        for i in 0..<count {
            let g = gate[i]
            out[i] = g / (1 + expf(-g)) * up[i]
        }
    }

    /// Gradients of gate and up (overwritten) from the gradient of the output.
    public static func backward(gate: UnsafePointer<Float>, up: UnsafePointer<Float>, dOut: UnsafePointer<Float>,
                                dGate: UnsafeMutablePointer<Float>, dUp: UnsafeMutablePointer<Float>, count: Int) {
        for i in 0..<count {
            let g = gate[i]
            let s = 1 / (1 + expf(-g))
            let silu = g * s
            dUp[i] = dOut[i] * silu
            dGate[i] = dOut[i] * up[i] * s * (1 + g * (1 - s))
        }
    }
}
