/// Which rows of each rank of a sequence-parallel group ask for attention: all of them
/// (training, a plain prefill) or a subset (a chunk-reuse prefill computes only the rows it
/// selected, against every rank's keys). Every rank holds the same description of every rank.
public struct QueryRows: Sendable, Equatable {
    /// Per rank: runs of query positions, with `localRow` indexing that rank's compact query rows.
    public let segments: [[SequenceSegment]]
    /// Whether these are every row of the layout (the layout's own segments).
    public let isWholeLayout: Bool

    /// Every row of every rank.
    public init(wholeLayout layout: SequenceLayout) {
        segments = (0..<layout.ranks).map { layout.segments(rank: $0) }
        isWholeLayout = true
    }

    /// The rows at the positions where `selected` is true (indexed by global position, covering
    /// the layout's length), compacted per rank in local order.
    public init(layout: SequenceLayout, selected: [Bool]) throws {
        guard selected.count == layout.length else {
            throw SequenceParallelError.shapeMismatch("query selection of \(selected.count) positions for a sequence of \(layout.length)")
        }
        segments = (0..<layout.ranks).map { rank in
            var runs: [SequenceSegment] = []
            var row = 0
            for s in layout.segments(rank: rank) {
                var p = s.start
                while p < s.start + s.count {
                    guard selected[p] else { p += 1; continue }
                    var e = p + 1
                    while e < s.start + s.count && selected[e] { e += 1 }
                    runs.append(SequenceSegment(start: p, count: e - p, localRow: row))
                    row += e - p
                    p = e
                }
            }
            return runs
        }
        isWholeLayout = selected.allSatisfy { $0 }
    }

    /// Query rows of `rank`.
    public func count(rank: Int) -> Int { segments[rank].reduce(0) { $0 + $1.count } }
}
