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
    /// Attention scores of a step's decoding rows (grown when a step needs more).
    private var scores = Tensor(zeros: [1])

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
            let mine = fusion.localPositions, ranks = 0..<group.size
            let kv = PromptKV(config: model.config, rows: mine.count)
            let rowFloats = 2 * kv.width * kv.keys.count
            // Every rank's stored rows from rank 0 at once (only rank 0 holds them).
            let cachedRows = ranks.map { fusion.positions(rank: $0).filter { plan.cached[$0] } }
            var parts: [Float] = []
            if rank == 0 {
                guard let source else { throw EngineConfigError("rank 0 blends without the prompt's stored rows") }
                // Each rank's block is packed on its own ([layer][K; V] of that rank's rows).
                parts = cachedRows.flatMap { source.pack(rows: $0) }
            }
            try group.scatter(parts, counts: cachedRows.map { $0.count * rowFloats })
                .withUnsafeBufferPointer { kv.unpack($0, rows: mine.indices.filter { plan.cached[mine[$0]] }) }
            let result = try model.fuse(tokens: plan.prefillTokens, cached: plan.cached, kv: kv, policy: plan.recompute, group: fusion)
            for l in 0..<model.config.numHiddenLayers {
                cache.store(layer: l, blocks: plan.prefillBlocks[rank], localRow: 0, count: mine.count, k: kv.keys[l], v: kv.values[l], rowOffset: 0)
            }
            // The rows of chunks computed here go back to rank 0, which stores them.
            var wanted = [Bool](repeating: false, count: length)
            for s in plan.returnedSpans { for j in s where j < length { wanted[j] = true } }
            let returnedRows = ranks.map { fusion.positions(rank: $0).filter { wanted[$0] } }
            let all = try group.gather(kv.pack(rows: mine.indices.filter { wanted[mine[$0]] }), counts: returnedRows.map { $0.count * rowFloats })
            if rank == 0, let source {
                all.withUnsafeBufferPointer { all in
                    var at = 0
                    for rows in returnedRows {
                        source.unpack(UnsafeBufferPointer(rebasing: all[at..<(at + rows.count * rowFloats)]), rows: rows)
                        at += rows.count * rowFloats
                    }
                }
            }
            return result
        }
    }

    private func batch(_ plan: StepPlan) throws -> Tensor? {
        let rank = group.rank, cache = self.cache
        let logitRows = rank == 0 ? plan.logitRows.map(Int.init) : []
        // Decoding rows (one per sequence) attend in parallel, each over its blocks in place;
        // their visible rows and score scratch are set up once for all layers.
        let rows = plan.chunks.filter { $0.count == 1 }, spans = plan.chunks.filter { $0.count > 1 }
        let runs = rows.map { cache.decodeRuns(kv: $0.kv[rank], position: $0.start) }
        var scoreOffsets: [Int] = [], need = 0
        for r in runs { scoreOffsets.append(need); need += shape.queryHeads * r.keys }
        if scores.count < need { scores = Tensor(zeros: [need]) }
        let scratch = scores
        let logits = try model.step(tokens: plan.tokens, positions: plan.positions, logitRows: logitRows, workspace: workspace) { l, q, k, v, o, lse in
            for c in plan.chunks where c.appender == rank {
                cache.store(layer: l, blocks: c.kv[rank].blocks, localRow: c.appendRow, count: c.count, k: k, v: v, rowOffset: c.rowOffset)
            }
            Parallel.forEach(rows.count) { i in
                cache.attendRow(layer: l, blocks: rows[i].kv[rank].blocks, runs: runs[i], q: q, out: o, lse: lse, row: rows[i].rowOffset,
                                scores: scratch.pointer + scoreOffsets[i])
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
