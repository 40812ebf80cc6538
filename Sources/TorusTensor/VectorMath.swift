import CTorusKernels

/// Vectorised elementwise math over fp32 buffers. The loops live in the C target
/// `CTorusKernels`, compiled for AVX-512, AVX2 and baseline x86-64 and dispatched at load.
public enum VectorMath {
    /// e^x with the kernels' polynomial (relative error about 2e-7).
    @inline(__always)
    public static func exp(_ x: Float) -> Float { torus_exp(x) }

    /// `x[i] = e^(x[i] - shift)` for `count` values; returns their sum.
    @inline(__always) @discardableResult
    public static func expShifted(_ x: UnsafeMutablePointer<Float>, count: Int, shift: Float, scale: Float = 1) -> Float {
        torus_exp_shifted(x, count, shift, scale)
    }

    /// The largest of `count` values (-inf when empty).
    @inline(__always)
    public static func max(_ x: UnsafePointer<Float>, count: Int) -> Float { torus_max(x, count) }

    /// `x[i] *= factor`.
    @inline(__always)
    public static func scale(_ x: UnsafeMutablePointer<Float>, count: Int, by factor: Float) {
        torus_scale(x, count, factor)
    }

    /// Sum of squares, accumulated in Double.
    @inline(__always)
    public static func sumOfSquares(_ x: UnsafePointer<Float>, count: Int) -> Double { torus_sum_squares(x, count) }

    /// One AdamW step over `count` values (see `AdamW` in TorusTrain for the formula).
    @inline(__always)
    public static func adamW(parameters p: UnsafeMutablePointer<Float>, gradients g: UnsafePointer<Float>,
                             firstMoment m: UnsafeMutablePointer<Float>, secondMoment v: UnsafeMutablePointer<Float>, count: Int,
                             beta1: Float, beta2: Float, eps: Float, decay: Float, stepSize: Float, biasCorrection2Root: Float) {
        torus_adamw(p, g, m, v, count, beta1, beta2, eps, decay, stepSize, biasCorrection2Root)
    }

    /// `out[i] = 1 / (1 + e^(-x[i]))`.
    @inline(__always)
    public static func sigmoid(_ x: UnsafePointer<Float>, _ out: UnsafeMutablePointer<Float>, count: Int) {
        torus_sigmoid(x, out, count)
    }
}

extension VectorMath {
    /// `y[i] += x[i]`.
    @inline(__always)
    public static func add(_ x: UnsafePointer<Float>, into y: UnsafeMutablePointer<Float>, count: Int) {
        for i in 0..<count { y[i] += x[i] }
    }
}
