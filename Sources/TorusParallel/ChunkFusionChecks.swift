import Foundation
import TorusComm
import TorusModel
import TorusTensor

/// Compares a chunk-reuse prefill split over a sequence-parallel group with the same prefill
/// on one rank (CHUNK_REUSE.md, exactness test 5): every rank builds the same small model,
/// prompt and cached chunk KV (each chunk computed alone, relocated), runs the one-rank fusion
/// as the reference and the sharded one on its rows, and checks the logits, its rows of the
/// blended keys and values, and the rows chosen for recompute.
public struct ChunkFusionChecks {
    public struct Case: Sendable, CustomStringConvertible {
        public var name: String
        public var layout: SequenceLayoutKind
        public var policy: RecomputePolicy
        public var description: String { "\(layout.rawValue) \(name)" }
    }

    public let comm: Communicator
    public let method: SequenceParallelMethod
    let model: LlamaModel
    let chunks: [[Int32]]
    let tokens: [Int32]

    public init(comm: Communicator, method: SequenceParallelMethod) throws {
        self.comm = comm
        self.method = method
        let config = LlamaConfig(hiddenSize: 32, intermediateSize: 48, numHiddenLayers: 4, numAttentionHeads: 4,
                                 numKeyValueHeads: 2, vocabSize: 48, maxPositionEmbeddings: 512)
        model = try LlamaModel.initialized(config: config, seed: 21)
        try model.prepareServing(maxPositions: config.maxPositionEmbeddings)
        chunks = [(0..<17).map { Int32(($0 * 7 + 3) % 48) }, (0..<23).map { Int32(($0 * 5 + 11) % 48) },
                  (0..<19).map { Int32(($0 * 11 + 1) % 48) }]
        // A question that brings the prompt to a multiple of 2P (the zigzag layout's unit).
        let unit = 2 * comm.size, body = chunks.reduce(0) { $0 + $1.count } + 6
        let question = (0..<(6 + (unit - body % unit) % unit)).map { Int32(($0 * 13 + 5) % 48) }
        tokens = chunks.flatMap { $0 } + question
    }

    var chunkRows: Int { chunks.reduce(0) { $0 + $1.count } }

    public var cases: [Case] {
        let layers = model.config.numHiddenLayers
        let epic = chunks.indices.flatMap { c in
            let start = chunks.prefix(c).reduce(0) { $0 + $1.count }
            return Array(start..<(start + 4))
        }
        let policies: [(String, RecomputePolicy)] = [
            ("full", .full), ("unchanged", .unchanged), ("cacheblend r=0.3", .cacheBlend(ratio: 0.3, checkLayer: 1)),
            ("cacheblend r=0.05 at the last layer", .cacheBlend(ratio: 0.05, checkLayer: layers - 1)),
            ("gradual 0.5 then 0.2", RecomputePolicy(checks: [.init(layer: 1, ratio: 0.5), .init(layer: layers - 2, ratio: 0.2)])),
            ("first 4 tokens per chunk", RecomputePolicy(forcedRows: epic)),
        ]
        return SequenceLayoutKind.allCases.flatMap { layout in policies.map { Case(name: $0.0, layout: layout, policy: $0.1) } }
    }

    func cachedKV() throws -> PromptKV { try model.chunksComputedAlone(chunks, rows: tokens.count) }

    /// Largest differences from the one-rank fusion (max over ranks): logits, keys and
    /// values, and "rows" (1 when the recomputed rows or per-layer counts differ).
    public func run(_ c: Case) throws -> [String: Double] {
        let n = tokens.count, kw = model.config.attentionShape.keyValueWidth, layers = model.config.numHiddenLayers
        let cached = (0..<n).map { $0 < chunkRows }
        let reference = try cachedKV()
        let one = try model.fuse(tokens: tokens, cached: cached, kv: reference, policy: c.policy)

        let layout = try SequenceLayout(kind: c.layout, ranks: comm.size, length: n)
        let group = try SequenceParallelFusion(comm: comm, method: method, layout: layout, shape: model.config.attentionShape)
        let all = try cachedKV(), mine = group.localPositions
        let kv = PromptKV(config: model.config, rows: mine.count)
        for l in 0..<layers {
            for (row, p) in mine.enumerated() where cached[p] {
                (kv.keys[l].pointer + row * kw).update(from: all.keys[l].pointer + p * kw, count: kw)
                (kv.values[l].pointer + row * kw).update(from: all.values[l].pointer + p * kw, count: kw)
            }
        }
        let split = try model.fuse(tokens: tokens, cached: cached, kv: kv, policy: c.policy, group: group)

        var kvError: Float = 0
        for l in 0..<layers {
            for (row, p) in mine.enumerated() {
                for i in 0..<kw {
                    kvError = max(kvError, abs(kv.keys[l].pointer[row * kw + i] - reference.keys[l].pointer[p * kw + i]),
                                  abs(kv.values[l].pointer[row * kw + i] - reference.values[l].pointer[p * kw + i]))
                }
            }
        }
        let logitError = zip(one.logits, split.logits).map { abs($0 - $1) }.max() ?? .infinity
        let sameRows = one.recomputedCachedRows == split.recomputedCachedRows && one.projectedRows == split.projectedRows
            && one.computedRows == split.computedRows && one.logits.count == split.logits.count
        let errors = ["logits": Double(logitError), "kv": Double(kvError), "rows": sameRows ? 0 : 1]
        let keys = errors.keys.sorted()
        let worst = try comm.allReduce(keys.map { errors[$0] ?? .infinity }, op: .max)
        return Dictionary(uniqueKeysWithValues: zip(keys, worst))
    }
}
