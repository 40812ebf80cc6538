import Foundation

/// Rotary position embeddings in the Hugging Face LLaMA convention (`rotate_half`: the
/// first and second halves of each head form the rotated pairs), with a cos/sin table.
public final class RotaryTable: @unchecked Sendable {
    /// Dimensions per head.
    public let headDim: Int
    /// The RoPE base (`rope_theta`).
    public let theta: Double
    /// Positions the table covers.
    public private(set) var capacity: Int
    private var cosTable: [Float]
    private var sinTable: [Float]

    public init(headDim: Int, theta: Double, capacity: Int) {
        precondition(headDim % 2 == 0, "rotary head dimension must be even, got \(headDim)")
        self.headDim = headDim
        self.theta = theta
        self.capacity = 0
        self.cosTable = []
        self.sinTable = []
        ensure(capacity: capacity)
    }

    /// Grows the table to cover positions below `capacity`.
    public func ensure(capacity requested: Int) {
        guard requested > capacity else { return }
        // Grow geometrically, so decoding token by token past the capacity rebuilds rarely.
        let newCapacity = capacity == 0 ? requested : max(requested, 2 * capacity)
        let half = headDim / 2
        var c = [Float](repeating: 0, count: newCapacity * half)
        var s = c
        // transformers: inv_freq = 1 / theta^(2i/d) in fp32; angle = pos * inv_freq in fp32.
        let invFreq = (0..<half).map { Float(1.0 / pow(theta, Double(2 * $0) / Double(headDim))) }
        for p in 0..<newCapacity {
            for i in 0..<half {
                let angle = Float(p) * invFreq[i]
                c[p * half + i] = Float(cos(Double(angle)))
                s[p * half + i] = Float(sin(Double(angle)))
            }
        }
        cosTable = c
        sinTable = s
        capacity = newCapacity
    }

    /// Rotates `rows` rows of `heads` heads in place; row r is at position `positions[r]`.
    /// `inverse` rotates by the negative angle (the backward pass, or undoing a rotation).
    public func apply(_ x: UnsafeMutablePointer<Float>, rows: Int, heads: Int, positions: UnsafePointer<Int32>, inverse: Bool = false) {
        guard rows > Self.rowsPerTask else { return apply(x, rows: 0..<rows, heads: heads, positions: positions, inverse: inverse) }
        // Each task rotates its own rows.
        Parallel.forEach((rows + Self.rowsPerTask - 1) / Self.rowsPerTask) { t in
            apply(x, rows: (t * Self.rowsPerTask)..<min(rows, (t + 1) * Self.rowsPerTask), heads: heads, positions: positions, inverse: inverse)
        }
    }

    /// Rows per parallel item of `apply`: fewer rows run on the calling thread.
    static let rowsPerTask = 64

    private func apply(_ x: UnsafeMutablePointer<Float>, rows: Range<Int>, heads: Int, positions: UnsafePointer<Int32>, inverse: Bool) {
        let half = headDim / 2
        let sign: Float = inverse ? -1 : 1
        cosTable.withUnsafeBufferPointer { cb in
            sinTable.withUnsafeBufferPointer { sb in
                for r in rows {
                    let p = Int(positions[r])
                    precondition(p >= 0 && p < capacity, "position \(p) outside rotary table of \(capacity)")
                    let cr = cb.baseAddress! + p * half, sr = sb.baseAddress! + p * half
                    for h in 0..<heads {
                        let v = x + (r * heads + h) * headDim
                        for i in 0..<half {
                            let a = v[i], b = v[i + half]
                            let c = cr[i], s = sign * sr[i]
                            v[i] = a * c - b * s
                            v[i + half] = b * c + a * s
                        }
                    }
                }
            }
        }
    }

    /// Rotates by a constant position shift `delta` (a RoPE-encoded vector at position p
    /// becomes the one at p + delta; exact because rotations compose).
    public func shift(_ x: UnsafeMutablePointer<Float>, rows: Int, heads: Int, by delta: Int) {
        let positions = [Int32](repeating: Int32(abs(delta)), count: rows)
        ensure(capacity: abs(delta) + 1)
        positions.withUnsafeBufferPointer { apply(x, rows: rows, heads: heads, positions: $0.baseAddress!, inverse: delta < 0) }
    }
}
