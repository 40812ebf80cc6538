import TorusComm
import TorusModel
import TorusTensor

/// The ranks of a sequence-parallel group as the `FusionGroup` of a chunk-reuse prefill: each
/// rank holds its layout rows of the prompt's keys and values, and the rows it computes attend
/// to every rank's with Ring Attention or TokenRing (only the computed rows' queries take part).
public final class SequenceParallelFusion: FusionGroup {
    public let layout: SequenceLayout
    let attention: SequenceParallelAttention
    let peers: CommunicatorShardGroup

    public init(comm: Communicator, method: SequenceParallelMethod, layout: SequenceLayout, shape: AttentionShape) throws {
        self.layout = layout
        attention = try method.make(comm: comm, layout: layout, shape: shape, causal: true)
        peers = CommunicatorShardGroup(comm: comm)
    }

    public var rank: Int { peers.rank }
    public var size: Int { peers.size }
    public var localPositions: [Int] { layout.positions(rank: rank) }
    public func positions(rank: Int) -> [Int] { layout.positions(rank: rank) }
    public func allGather(_ values: [Float]) throws -> [[Float]] { try peers.allGather(values) }

    public func attend(layer: Int, computed: [Bool], rows: [Int], q: Tensor, kv: PromptKV, out: Tensor, lse: Tensor) throws {
        let n = layout.localCount, kw = kv.width
        guard kv.rows >= n else { throw SequenceParallelError.shapeMismatch("a prompt cache of \(kv.rows) rows for \(n) local rows") }
        let queries = try QueryRows(layout: layout, selected: computed)
        let k = kv.keys[layer].view(offset: 0, shape: [n, kw]), v = kv.values[layer].view(offset: 0, shape: [n, kw])
        let (o, l) = try attention.forward(queries: queries, q: q, k: k, v: v)
        out.pointer.update(from: o.pointer, count: o.count)
        lse.pointer.update(from: l.pointer, count: l.count)
    }
}
