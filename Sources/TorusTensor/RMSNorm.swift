import CTorusKernels

/// Root-mean-square normalisation as in LLaMA: `y = x / sqrt(mean(x^2) + eps) * w`.
public enum RMSNorm {
    /// Rows per parallel item: fewer rows run on the calling thread.
    static let rowsPerTask = 64

    /// Normalises `rows` rows of width `dim`; stores each row's reciprocal RMS in `rstd`.
    public static func forward(x: UnsafePointer<Float>, weight: UnsafePointer<Float>, y: UnsafeMutablePointer<Float>,
                               rstd: UnsafeMutablePointer<Float>, rows: Int, dim: Int, eps: Float) {
        guard rows > rowsPerTask else {
            torus_rms_norm(x, weight, y, rstd, 0, rows, dim, eps)
            return
        }
        // Each task writes its own rows.
        Parallel.forEach((rows + rowsPerTask - 1) / rowsPerTask) { t in
            torus_rms_norm(x, weight, y, rstd, t * rowsPerTask, min(rows, (t + 1) * rowsPerTask), dim, eps)
        }
    }

    /// `dx` (overwritten, or added to when `accumulate`) and `dWeight` (accumulated).
    public static func backward(x: UnsafePointer<Float>, weight: UnsafePointer<Float>, rstd: UnsafePointer<Float>,
                                dy: UnsafePointer<Float>, dx: UnsafeMutablePointer<Float>, dWeight: UnsafeMutablePointer<Float>,
                                rows: Int, dim: Int, accumulate: Bool = false) {
        for r in 0..<rows {
            let xr = x + r * dim, dyr = dy + r * dim, dxr = dx + r * dim
            let inv = rstd[r]
            var dot: Float = 0
            for i in 0..<dim {
                let xhat = xr[i] * inv
                dWeight[i] += dyr[i] * xhat
                dot += dyr[i] * weight[i] * xhat
            }
            let mean = dot / Float(dim)
            for i in 0..<dim {
                let g = inv * (dyr[i] * weight[i] - xr[i] * inv * mean)
                dxr[i] = accumulate ? dxr[i] + g : g
            }
        }
    }
}
