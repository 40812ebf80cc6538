import Foundation

/// A small, fast, seedable generator (SplitMix64) whose sequence is the same on every
/// platform, so runs with the same seed are reproducible.
public struct SeededGenerator: RandomNumberGenerator, Sendable {
    public private(set) var state: UInt64

    public init(seed: UInt64) { state = seed }

    public mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    public mutating func nextUniform() -> Double {
        Double(next() >> 11) * (1.0 / Double(1 << 53))
    }

    /// Standard normal (Box-Muller).
    public mutating func nextNormal() -> Double {
        var u1 = nextUniform()
        if u1 < 1e-300 { u1 = 1e-300 }
        let u2 = nextUniform()
        return (-2 * Foundation.log(u1)).squareRoot() * Foundation.cos(2 * Double.pi * u2)
    }
}


extension SeededGenerator {
    /// Skips the `count` normal samples `fillNormal` would draw (each takes two draws), in O(1).
    public mutating func skipNormals(_ count: Int) {
        state &+= UInt64(2 * count) &* 0x9E37_79B9_7F4A_7C15
    }
}

extension Tensor {
    /// Fills with normal samples of the given standard deviation.
    public func fillNormal(std: Float, generator: inout SeededGenerator) {
        for i in 0..<count { pointer[i] = Float(generator.nextNormal()) * std }
    }
}
