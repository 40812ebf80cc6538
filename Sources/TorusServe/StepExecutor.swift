import TorusModel
import TorusTensor
import TorusTrace

/// Runs step plans on one rank: the batched model step over this rank's KV blocks, with every
/// rank's attention partials merged in rank order (the one merge function) when several ranks
/// hold a sequence; and prefills of long prompts split across the ranks.
final class StepExecutor {
    let model: LlamaModel
    let cache: PagedKVCache
    let workspace: StepWorkspace
    let group: ServeGroup
    let shape: AttentionShape
    private let packed: Tensor     // [rows * (Hq*dh + Hq)]   this rank's partials
    private let gathered: Tensor   // [ranks * rows * (Hq*dh + Hq)]

    init(model: LlamaModel, cache: PagedKVCache, workspace: StepWorkspace, group: ServeGroup) {
        self.model = model
        self.cache = cache
        self.workspace = workspace
        self.group = group
        shape = model.config.attentionShape
        let width = shape.queryWidth + shape.queryHeads
        packed = Tensor(zeros: [group.size > 1 ? workspace.rowCapacity * width : 1])
        gathered = Tensor(zeros: [group.size > 1 ? group.size * workspace.rowCapacity * width : 1])
    }

    /// Plans run so far (the step number of trace spans).
    private var executed = 0

    /// Runs `plan`; returns the logits of the plan's logit rows on rank 0 (nil elsewhere and
    /// for prefills). With a timeline, each plan is a step span: "serve prefill N tokens"
    /// across the ranks, or "serve batch N rows".
    func execute(_ plan: StepPlan) throws -> Tensor? {
        executed += 1
        Timeline.current?.step = executed
        switch plan.kind {
        case .stop: return nil
        case .prefill:
            try Timeline.measure("serve prefill \(plan.prefillTokens.count) tokens", kind: .step) { try prefill(plan) }
            return nil
        case .batch:
            return try Timeline.measure("serve batch \(plan.tokens.count) rows", kind: .step) { try batch(plan) }
        }
    }

    private func batch(_ plan: StepPlan) throws -> Tensor? {
        let rank = group.rank, cache = self.cache
        let logitRows = rank == 0 ? plan.logitRows.map(Int.init) : []
        let logits = try model.step(tokens: plan.tokens, positions: plan.positions, logitRows: logitRows, workspace: workspace) { l, q, k, v, o, lse in
            for c in plan.chunks {
                if c.appender == rank {
                    cache.store(layer: l, blocks: c.kv[rank].blocks, localRow: c.appendRow, count: c.count, k: k, v: v, rowOffset: c.rowOffset)
                }
                cache.attend(layer: l, kv: c.kv[rank], start: c.start, count: c.count, q: q, out: o, lse: lse, rowOffset: c.rowOffset)
            }
            if self.group.size > 1 { try self.mergeAcrossRanks(out: o, lse: lse, rows: plan.tokens.count) }
        }
        return rank == 0 ? logits : nil
    }

    /// Every rank ends with the same attention output: all partials gathered and merged in
    /// rank order.
    private func mergeAcrossRanks(out: Tensor, lse: Tensor, rows: Int) throws {
        let hq = shape.queryHeads, d = shape.headDim
        AttentionMerge.pack(out: out.pointer, lse: lse.pointer, rows: rows, heads: hq, headDim: d, into: packed.pointer)
        try group.allGather(packed.pointer, count: AttentionMerge.packedCount(rows: rows, heads: hq, headDim: d), into: gathered.pointer)
        AttentionMerge.mergePacked(gathered.pointer, parts: group.size, out: out.pointer, lse: lse.pointer, rows: rows, heads: hq, headDim: d)
    }

    private func prefill(_ plan: StepPlan) throws {
        let length = plan.prefillTokens.count
        let positions = try group.prefillPositions(length: length)[group.rank]
        let local = positions.map { plan.prefillTokens[$0] }
        let attention = try group.prefillAttention(length: length, shape: shape)
        let blocks = plan.prefillBlocks[group.rank], cache = self.cache
        _ = try model.prefillLayers(localTokens: local, attention: attention) { l, k, v in
            cache.store(layer: l, blocks: blocks, localRow: 0, count: local.count, k: k, v: v, rowOffset: 0)
        }
    }
}
