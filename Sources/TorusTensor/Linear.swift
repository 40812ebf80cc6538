/// A dense layer without bias in the PyTorch convention: `y = x W^T` with `W` of shape
/// [out, in], applied to `rows` rows of `x`.
public enum Linear {
    /// Up to this many rows, `forward` runs one matrix-vector product per row. Measured with
    /// OpenBLAS 0.3.21 on configs/serve-bench.yaml (AMD EPYC, 2 threads): `torus bench decode`
    /// 67 -> 131 tokens/s at one row; `torus bench serve` with 8 concurrent decodes 298 -> 376
    /// tokens/s; thresholds of 16 and 32 rows were slower than sgemm at 16 and 32 decodes.
    public static let gemvRows = 8

    /// `y[rows, out] = x[rows, in] W^T` (or `+=` when `accumulate`).
    public static func forward(x: UnsafePointer<Float>, weight: UnsafePointer<Float>, y: UnsafeMutablePointer<Float>,
                               rows: Int, inFeatures: Int, outFeatures: Int, accumulate: Bool = false) {
        if rows <= gemvRows {
            // A few rows (decoding): matrix-vector products read the weights once each, where
            // sgemm would first copy (pack) the whole weight matrix.
            for r in 0..<rows {
                BLAS.gemv(m: outFeatures, n: inFeatures, a: weight, lda: inFeatures, x: x + r * inFeatures,
                          beta: accumulate ? 1 : 0, y: y + r * outFeatures)
            }
            return
        }
        BLAS.gemm(transB: true, m: rows, n: outFeatures, k: inFeatures, a: x, lda: inFeatures,
                  b: weight, ldb: inFeatures, beta: accumulate ? 1 : 0, c: y, ldc: outFeatures)
    }

    /// Input gradient `dx = dy W` (or `+=` when `accumulate`) and weight gradient `dW += dy^T x`.
    public static func backward(x: UnsafePointer<Float>, weight: UnsafePointer<Float>, dy: UnsafePointer<Float>,
                                dx: UnsafeMutablePointer<Float>?, dWeight: UnsafeMutablePointer<Float>,
                                rows: Int, inFeatures: Int, outFeatures: Int, accumulateInput: Bool = false) {
        if let dx {
            BLAS.gemm(m: rows, n: inFeatures, k: outFeatures, a: dy, lda: outFeatures, b: weight, ldb: inFeatures,
                      beta: accumulateInput ? 1 : 0, c: dx, ldc: inFeatures)
        }
        BLAS.gemm(transA: true, m: outFeatures, n: inFeatures, k: rows, a: dy, lda: outFeatures, b: x, ldb: inFeatures,
                  beta: 1, c: dWeight, ldc: inFeatures)
    }
}
