import CTorusKernels
import Foundation

/// A dense layer without bias in the PyTorch convention: `y = x W^T` with `W` of shape
/// [out, in], applied to `rows` rows of `x`.
public enum Linear {
    /// Up to this many rows, `forward` runs one OpenBLAS matrix-vector product per row (the
    /// first brings a layer's weights into cache for the next).
    public static let gemvRows = 2
    /// Up to this many rows (above `gemvRows`), `forward` reads the weights once for all rows
    /// with Torus's own kernel (a decoding step's rows), where OpenBLAS's sgemm first copies
    /// (packs) the whole weight matrix. `torus bench linear` measures the crossovers;
    /// TORUS_LINEAR_ROWS overrides this one.
    public static let fewRows: Int = {
        if let v = ProcessInfo.processInfo.environment["TORUS_LINEAR_ROWS"].flatMap({ Int($0) }), v >= 0 { return v }
        return 32
    }()

    /// `y[rows, out] = x[rows, in] W^T` (or `+=` when `accumulate`).
    public static func forward(x: UnsafePointer<Float>, weight: UnsafePointer<Float>, y: UnsafeMutablePointer<Float>,
                               rows: Int, inFeatures: Int, outFeatures: Int, accumulate: Bool = false) {
        if rows > gemvRows && rows <= fewRows {
            forwardFewRows(x: x, weight: weight, y: y, rows: rows, inFeatures: inFeatures, outFeatures: outFeatures, accumulate: accumulate)
        } else {
            forwardBLAS(x: x, weight: weight, y: y, rows: rows, inFeatures: inFeatures, outFeatures: outFeatures, accumulate: accumulate,
                        perRow: rows <= gemvRows)
        }
    }

    /// `forward` with the weights read once for all rows, the output features split over this
    /// rank's threads.
    public static func forwardFewRows(x: UnsafePointer<Float>, weight: UnsafePointer<Float>, y: UnsafeMutablePointer<Float>,
                                      rows: Int, inFeatures: Int, outFeatures: Int, accumulate: Bool = false) {
        guard rows > 0, outFeatures > 0 else { return }
        // Parts of at least 48 outputs (a few tiles each), at most one per thread.
        let parts = max(1, min(BLAS.threads, outFeatures / 48))
        let per = (outFeatures + parts - 1) / parts
        Parallel.forEach(parts) { p in
            let begin = p * per, end = min(outFeatures, begin + per)
            guard begin < end else { return }
            torus_linear_rows(x, weight, y, rows, inFeatures, outFeatures, begin, end, accumulate ? 1 : 0)
        }
    }

    /// `forward` through OpenBLAS: sgemm, or one matrix-vector product per row.
    public static func forwardBLAS(x: UnsafePointer<Float>, weight: UnsafePointer<Float>, y: UnsafeMutablePointer<Float>,
                                   rows: Int, inFeatures: Int, outFeatures: Int, accumulate: Bool = false, perRow: Bool = false) {
        if perRow {
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
