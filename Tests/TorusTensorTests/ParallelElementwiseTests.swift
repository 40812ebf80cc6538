import Foundation
import Testing
@testable import TorusTensor

/// SwiGLU and rotary split their rows over the threads past a size; the split result must be
/// the one-thread result exactly (each element is computed the same way wherever it runs).
@Suite struct ParallelElementwiseTests {
    @Test func swigluSplitOverThreadsEqualsTheFormula() {
        let count = 3 * SwiGLU.elementsPerTask + 123
        var rng = SeededGenerator(seed: 3)
        let gate = (0..<count).map { _ in Float(rng.nextUniform() * 8 - 4) }, up = (0..<count).map { _ in Float(rng.nextUniform() * 2 - 1) }
        var out = [Float](repeating: .nan, count: count)
        SwiGLU.forward(gate: gate, up: up, out: &out, count: count)
        var worst: Double = 0
        for i in 0..<count {
            let g = Double(gate[i]), expected = g / (1 + exp(-g)) * Double(up[i])
            worst = max(worst, abs(Double(out[i]) - expected) / max(1e-3, abs(expected)))
        }
        #expect(worst < 1e-5, "largest relative error \(worst)")
    }

    @Test func rotarySplitOverThreadsEqualsRowByRow() {
        let d = 16, heads = 3, rows = 5 * RotaryTable.rowsPerTask + 7
        let table = RotaryTable(headDim: d, theta: 10000, capacity: 4096)
        var rng = SeededGenerator(seed: 4)
        let x = (0..<(rows * heads * d)).map { _ in Float(rng.nextUniform() * 2 - 1) }
        let positions = (0..<rows).map { _ in Int32(rng.next() % 4096) }
        var together = x
        table.apply(&together, rows: rows, heads: heads, positions: positions)
        var alone = x
        for r in 0..<rows {
            alone.withUnsafeMutableBufferPointer { p in
                table.apply(p.baseAddress! + r * heads * d, rows: 1, heads: heads, positions: [positions[r]])
            }
        }
        #expect(together == alone)
        #expect(together != x)
    }
}
