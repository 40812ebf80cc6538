import Testing
import TorusParallel

@Suite struct SequenceLayoutTests {
    @Test func zigzagGivesRankRChunksRAnd2PMinus1MinusR() throws {
        let l = try SequenceLayout(kind: .zigzag, ranks: 4, length: 16)
        #expect(l.positions(rank: 0) == [0, 1, 14, 15])
        #expect(l.positions(rank: 3) == [6, 7, 8, 9])
        let all = (0..<4).flatMap { l.positions(rank: $0) }
        #expect(all.sorted() == Array(0..<16))
    }

    @Test func contiguousBlocks() throws {
        let l = try SequenceLayout(kind: .contiguous, ranks: 3, length: 12)
        #expect(l.positions(rank: 1) == [4, 5, 6, 7])
    }

    @Test func impossibleSplitsAreRefused() {
        #expect(throws: SequenceParallelError.indivisible(length: 20, parts: 6, layout: .zigzag)) {
            try SequenceLayout(kind: .zigzag, ranks: 3, length: 20)
        }
        #expect(throws: SequenceParallelError.tooManyRanks(ranks: 4, length: 6)) {
            try SequenceLayout(kind: .zigzag, ranks: 4, length: 6)
        }
        #expect(throws: SequenceParallelError.unknownMethod("rings")) { try SequenceParallelMethod(name: "rings") }
    }
}
