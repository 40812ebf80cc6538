import TorusModel
import TorusTensor

/// The ranks serving one model: what the engine needs from them (the parallel layer implements
/// it over MPI; `SingleRankGroup` is the one-process case). Rank 0 schedules; every rank runs
/// each step.
public protocol ServeGroup: AnyObject {
    var rank: Int { get }
    var size: Int { get }
    /// Rank 0 passes the step plan and every rank gets it back (other ranks wait for it
    /// without spinning a core while the server is idle).
    func exchangePlan(_ words: [Int32]) throws -> [Int32]
    /// Every rank's `count` floats of `input`, in rank order, into `output`.
    func allGather(_ input: UnsafePointer<Float>, count: Int, into output: UnsafeMutablePointer<Float>) throws
    /// Prefill across ranks: prompt lengths must be a multiple of this.
    var prefillGranularity: Int { get }
    /// Global positions each rank holds when a prompt of `length` tokens is prefilled across
    /// the ranks (rank order, local row order).
    func prefillPositions(length: Int) throws -> [[Int]]
    /// This rank's sequence-parallel attention (Ring Attention or TokenRing) for such a prefill.
    func prefillAttention(length: Int, shape: AttentionShape) throws -> SequenceAttention
    /// This rank's part of a chunk-reuse prefill of `length` tokens split across the ranks.
    func fusionGroup(length: Int, shape: AttentionShape) throws -> FusionGroup
    /// Rank 0's `parts` (packed in rank order, `counts[r]` values for rank r; ignored on the
    /// other ranks) to every rank at once; returns this rank's part.
    func scatter(_ parts: [Float], counts: [Int]) throws -> [Float]
    /// Every rank's `values` (`counts[r]` from rank r) to rank 0, packed in rank order; other
    /// ranks get nothing back.
    func gather(_ values: [Float], counts: [Int]) throws -> [Float]
}

/// One process serves alone.
public final class SingleRankGroup: ServeGroup {
    public init() {}
    public var rank: Int { 0 }
    public var size: Int { 1 }
    public func exchangePlan(_ words: [Int32]) throws -> [Int32] { words }
    public func allGather(_ input: UnsafePointer<Float>, count: Int, into output: UnsafeMutablePointer<Float>) throws {
        output.update(from: input, count: count)
    }
    public var prefillGranularity: Int { 1 }
    public func prefillPositions(length: Int) throws -> [[Int]] { [Array(0..<length)] }
    public func prefillAttention(length: Int, shape: AttentionShape) throws -> SequenceAttention {
        throw EngineConfigError("one rank does not prefill across ranks")
    }
    public func fusionGroup(length: Int, shape: AttentionShape) throws -> FusionGroup {
        throw EngineConfigError("one rank does not prefill across ranks")
    }
    public func scatter(_ parts: [Float], counts: [Int]) throws -> [Float] { parts }
    public func gather(_ values: [Float], counts: [Int]) throws -> [Float] { values }
}
