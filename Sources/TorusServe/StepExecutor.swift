import Foundation
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
        case .blend:
            _ = try blendStep(plan, source: nil)
            return nil
        }
    }

    /// A chunk-reuse prefill of `plan.prefillTokens` split across the ranks: rank 0 (whose
    /// `source` holds the prompt's stored chunk rows at their positions) sends each rank its
    /// cached rows, every rank runs its part of the fusion and stores its blended rows in its
    /// blocks, and the rows of `plan.returnedSpans` come back into `source`. Returns the
    /// fusion's result (the same on every rank).
    func blend(_ plan: StepPlan, source: PromptKV) throws -> FusionResult {
        executed += 1
        Timeline.current?.step = executed
        return try blendStep(plan, source: source)
    }

    private func blendStep(_ plan: StepPlan, source: PromptKV?) throws -> FusionResult {
        try Timeline.measure("serve prefill \(plan.prefillTokens.count) tokens reusing chunks", kind: .step) {
            let length = plan.prefillTokens.count, rank = group.rank
            guard plan.cached.count == length else {
                throw EngineConfigError("a blend plan with \(plan.cached.count) cache flags for \(length) tokens")
            }
            let fusion = try group.fusionGroup(length: length, shape: shape)
            let mine = fusion.localPositions
            let kv = PromptKV(config: model.config, rows: mine.count)
            if rank == 0 {
                guard let source else { throw EngineConfigError("rank 0 blends without the prompt's stored rows") }
                for r in 0..<group.size {
                    let rows = fusion.positions(rank: r).filter { plan.cached[$0] }
                    if r == 0 {
                        Self.copyRows(from: source, rows: rows, to: kv, rows: mine.indices.filter { plan.cached[mine[$0]] })
                    } else {
                        try group.send(Self.pack(source, rows: rows), to: r)
                    }
                }
            } else {
                let rows = mine.indices.filter { plan.cached[mine[$0]] }
                Self.unpack(try group.receive(count: rows.count * 2 * kv.width * kv.keys.count, from: 0), into: kv, rows: rows)
            }
            let result = try model.fuse(tokens: plan.prefillTokens, cached: plan.cached, kv: kv, policy: plan.recompute, group: fusion)
            for l in 0..<model.config.numHiddenLayers {
                cache.store(layer: l, blocks: plan.prefillBlocks[rank], localRow: 0, count: mine.count, k: kv.keys[l], v: kv.values[l], rowOffset: 0)
            }
            // The rows of chunks computed here go back to rank 0, which stores them.
            var wanted = [Bool](repeating: false, count: length)
            for s in plan.returnedSpans { for j in s where j < length { wanted[j] = true } }
            if rank == 0, let source {
                Self.copyRows(from: kv, rows: mine.indices.filter { wanted[mine[$0]] }, to: source, rows: mine.filter { wanted[$0] })
                for r in 1..<group.size {
                    let rows = fusion.positions(rank: r).filter { wanted[$0] }
                    Self.unpack(try group.receive(count: rows.count * 2 * kv.width * kv.keys.count, from: r), into: source, rows: rows)
                }
            } else if rank != 0 {
                try group.send(Self.pack(kv, rows: mine.indices.filter { wanted[mine[$0]] }), to: 0)
            }
            return result
        }
    }

    /// Rows `rows` of every layer's keys, then values: [layer][K rows; V rows].
    static func pack(_ kv: PromptKV, rows: [Int]) -> [Float] {
        let kw = kv.width
        var out = [Float](repeating: 0, count: rows.count * 2 * kw * kv.keys.count)
        var at = 0
        for l in kv.keys.indices {
            for t in [kv.keys[l], kv.values[l]] {
                for r in rows {
                    for i in 0..<kw { out[at + i] = t.pointer[r * kw + i] }
                    at += kw
                }
            }
        }
        return out
    }

    /// The inverse of `pack`: the values into rows `rows` of `kv`.
    static func unpack(_ values: [Float], into kv: PromptKV, rows: [Int]) {
        let kw = kv.width
        var at = 0
        for l in kv.keys.indices {
            for t in [kv.keys[l], kv.values[l]] {
                for r in rows {
                    for i in 0..<kw { t.pointer[r * kw + i] = values[at + i] }
                    at += kw
                }
            }
        }
    }

    static func copyRows(from a: PromptKV, rows: [Int], to b: PromptKV, rows target: [Int]) {
        unpack(pack(a, rows: rows), into: b, rows: target)
    }

    private func batch(_ plan: StepPlan) throws -> Tensor? {
        let rank = group.rank, cache = self.cache
        let logitRows = rank == 0 ? plan.logitRows.map(Int.init) : []
        // Decoding rows (one per sequence) attend in parallel, each over its blocks in place.
        let rows = plan.chunks.filter { $0.count == 1 }, spans = plan.chunks.filter { $0.count > 1 }
        let logits = try model.step(tokens: plan.tokens, positions: plan.positions, logitRows: logitRows, workspace: workspace) { l, q, k, v, o, lse in
            for c in plan.chunks where c.appender == rank {
                cache.store(layer: l, blocks: c.kv[rank].blocks, localRow: c.appendRow, count: c.count, k: k, v: v, rowOffset: c.rowOffset)
            }
            Parallel.forEach(rows.count) { i in
                let c = rows[i]
                cache.attendRow(layer: l, kv: c.kv[rank], position: c.start, q: q, out: o, lse: lse, row: c.rowOffset)
            }
            for c in spans {
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
