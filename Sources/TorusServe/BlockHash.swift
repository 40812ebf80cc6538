/// Chained hashes of full KV blocks for prefix caching: `h_i = H(h_{i-1}, tokens of block i,
/// extra)`, where block 0's extra is the request's `cache_salt`. Fixed constants (no
/// per-process seed), so every rank and every run computes the same hashes.
public enum BlockHash {
    /// The hash of one full block given its parent's hash (nil for block 0).
    public static func of(tokens: ArraySlice<Int32>, parent: UInt64?, salt: String?) -> UInt64 {
        var h: UInt64 = 0xCBF2_9CE4_8422_2325
        @inline(__always) func mix(_ word: UInt64) {
            h = (h ^ word) &* 0x0000_0100_0000_01B3
            h ^= h >> 29
        }
        mix(parent ?? 0x5EED_0F_B10C)
        mix(parent == nil ? 1 : 2)
        if parent == nil, let salt {
            for b in salt.utf8 { mix(UInt64(b) | 0x100) }
            mix(UInt64(salt.utf8.count) | 0x1_0000_0000)
        }
        for t in tokens { mix(UInt64(UInt32(bitPattern: t))) }
        // SplitMix64's finaliser spreads the last words over every bit.
        h = (h ^ (h >> 30)) &* 0xBF58_476D_1CE4_E5B9
        h = (h ^ (h >> 27)) &* 0x94D0_49BB_1331_11EB
        return h ^ (h >> 31)
    }

    /// Hashes of the first `count` full blocks of `tokens`.
    public static func chain(tokens: [Int32], blockSize: Int, count: Int, salt: String?) -> [UInt64] {
        var out: [UInt64] = []
        out.reserveCapacity(count)
        for i in 0..<count {
            out.append(of(tokens: tokens[(i * blockSize)..<((i + 1) * blockSize)], parent: out.last, salt: salt))
        }
        return out
    }
}
