import Testing
import TorusComm
import TorusParallel
import TorusTrain

/// Every point-to-point stream (Ring, TokenRing, the pipeline, the serving plan) takes its tags
/// from `MessageTag`: checked for groups of up to 1,024 ranks without running them.
@Suite struct MessageTagTests {
    /// Open MPI's MPI_TAG_UB with the ob1 and UCX layers (`torus check comm` prints it).
    static let openMPIUpperBound = Int(Int32.max)

    /// Every tag each stream numbers in one job of `ranks` ranks: a sequence-parallel group of
    /// all of them with either method, a pipeline of `ranks` stages (2 pieces each, 8
    /// micro-batches), the serving plan and the probes.
    func allTags(ranks p: Int) -> [(tag: Int, stream: String)] {
        var out: [(Int, String)] = []
        for method in SequenceParallelMethod.allCases {
            for m in method.messages(groupSize: p) { out += (0..<m.count).map { (MessageTag.of(m.kind, $0), "\(method) \(m.kind) #\($0)") } }
        }
        for forward in [true, false] {
            for receiver in 0..<(2 * p) {
                for micro in 0..<8 {
                    out.append((PipelineSchedule.tag(receiver: receiver, micro: micro, microBatches: 8, forward: forward),
                                "pipeline \(forward ? "F" : "B") stage \(receiver) micro \(micro)"))
                }
            }
        }
        for kind in [MessageKind.servePlanHeader, .servePlan, .serveHeartbeat] { out.append((MessageTag.of(kind, 0), "\(kind)")) }
        out += (0..<(10 + 16)).map { (MessageTag.of(.probe, $0), "probe #\($0)") }
        return out
    }

    @Test(arguments: [2, 3, 4, 8, 100, 101, 128, 1000, 1024])
    func noTwoStreamsShareATag(ranks: Int) throws {
        var owner: [Int: String] = [:]
        for (tag, stream) in allTags(ranks: ranks) {
            #expect(tag > 0 && tag <= Self.openMPIUpperBound, "\(stream): tag \(tag)")
            if let other = owner.updateValue(stream, forKey: tag) {
                Issue.record("\(ranks) ranks: tag \(tag) is both \(other) and \(stream)")
                return
            }
        }
        for method in SequenceParallelMethod.allCases {
            try method.checkTags(groupSize: ranks, upperBound: Self.openMPIUpperBound)
        }
        try PipelineSchedule.checkTags(stages: ranks, virtualStages: 2, microBatches: 8, upperBound: Self.openMPIUpperBound)
    }

    /// Within MPI's portable minimum (32767) Ring fits 1,024 ranks; TokenRing's split steps
    /// need a larger MPI_TAG_UB (Open MPI's), and a smaller one is refused by name.
    @Test func aSmallTagBoundIsRefusedNamingTheStream() throws {
        try SequenceParallelMethod.ring.checkTags(groupSize: 1024, upperBound: MessageTag.portableUpperBound)
        let error = #expect(throws: MessageTagError.self) {
            try SequenceParallelMethod.tokenring.checkTags(groupSize: 1024, upperBound: MessageTag.portableUpperBound)
        }
        #expect(error?.description.contains("tokenring on 1024 ranks numbers 4096 tokenRingQueries messages") == true, "\(String(describing: error))")
    }

    /// Heartbeats (background liveness signals) stay off the timeline; every other stream is on it.
    @Test func onlyHeartbeatsAreUntraced() {
        for kind in MessageKind.allCases {
            for index in [0, 1, 7] {
                #expect(MessageTag.isTraced(MessageTag.of(kind, index)) == (kind != .serveHeartbeat), "\(kind) #\(index)")
            }
        }
        #expect(MessageTag.isTraced(0))
    }
}
