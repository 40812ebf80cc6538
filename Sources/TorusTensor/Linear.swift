/// A dense layer without bias in the PyTorch convention: `y = x W^T` with `W` of shape
/// [out, in], applied to `rows` rows of `x`.
public enum Linear {
    /// `y[rows, out] = x[rows, in] W^T` (or `+=` when `accumulate`).
    public static func forward(x: UnsafePointer<Float>, weight: UnsafePointer<Float>, y: UnsafeMutablePointer<Float>,
                               rows: Int, inFeatures: Int, outFeatures: Int, accumulate: Bool = false) {
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
