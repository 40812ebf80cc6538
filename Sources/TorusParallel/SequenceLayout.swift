/// How a sequence is split over the ranks of a sequence-parallel group.
public enum SequenceLayoutKind: String, Sendable, CaseIterable {
    /// Rank r holds the r-th of P equal contiguous blocks (causal work is unbalanced).
    case contiguous
    /// The sequence is cut into 2P chunks and rank r holds chunks r and 2P-1-r, which balances
    /// causal attention work across ranks.
    case zigzag
}

/// A problem with a sequence-parallel configuration, found before any communication.
public enum SequenceParallelError: Error, CustomStringConvertible, Equatable {
    case indivisible(length: Int, parts: Int, layout: SequenceLayoutKind)
    case tooManyRanks(ranks: Int, length: Int)
    case unknownMethod(String)
    case unknownLayout(String)
    case shapeMismatch(String)

    public var description: String {
        switch self {
        case let .indivisible(length, parts, layout):
            return "sequence parallelism: a sequence of \(length) tokens cannot be split into \(parts) equal \(layout.rawValue) chunks; use a length divisible by \(parts)"
        case let .tooManyRanks(ranks, length):
            return "sequence parallelism: \(ranks) ranks for a sequence of \(length) tokens leaves ranks without tokens"
        case let .unknownMethod(name): return "sequence parallelism: unknown method '\(name)' (known: ring, tokenring)"
        case let .unknownLayout(name): return "sequence parallelism: unknown layout '\(name)' (known: zigzag, contiguous)"
        case let .shapeMismatch(message): return "sequence parallelism: \(message)"
        }
    }
}

/// One contiguous run of global token positions held by a rank.
public struct SequenceSegment: Sendable, Equatable {
    /// First global position.
    public let start: Int
    public let count: Int
    /// First row of this segment in the rank's local tensors.
    public let localRow: Int
}

/// Which global positions each rank of a sequence-parallel group holds.
public struct SequenceLayout: Sendable, Equatable {
    public let kind: SequenceLayoutKind
    public let ranks: Int
    public let length: Int

    /// Validates that `length` splits over `ranks` with this layout.
    public init(kind: SequenceLayoutKind, ranks: Int, length: Int) throws {
        let parts = kind == .zigzag ? 2 * ranks : ranks
        guard ranks >= 1, length >= parts else { throw SequenceParallelError.tooManyRanks(ranks: ranks, length: length) }
        guard length % parts == 0 else { throw SequenceParallelError.indivisible(length: length, parts: parts, layout: kind) }
        self.kind = kind
        self.ranks = ranks
        self.length = length
    }

    /// Tokens held by each rank.
    public var localCount: Int { length / ranks }

    /// The segments rank `rank` holds, in local row order.
    public func segments(rank: Int) -> [SequenceSegment] {
        switch kind {
        case .contiguous:
            return [SequenceSegment(start: rank * localCount, count: localCount, localRow: 0)]
        case .zigzag:
            let c = length / (2 * ranks)
            return [SequenceSegment(start: rank * c, count: c, localRow: 0),
                    SequenceSegment(start: (2 * ranks - 1 - rank) * c, count: c, localRow: c)]
        }
    }

    /// Global position of every local row of `rank`.
    public func positions(rank: Int) -> [Int] {
        segments(rank: rank).flatMap { s in (s.start..<(s.start + s.count)) }
    }
}
