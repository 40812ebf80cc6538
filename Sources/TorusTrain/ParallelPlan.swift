import Foundation
import TorusComm
import TorusModel

/// One line of an Open MPI hostfile: `host slots=N`.
public struct HostSlots: Equatable, Sendable {
    public var host: String
    public var slots: Int

    /// Parses an Open MPI hostfile (comments with #, `slots=N`, default 1 slot).
    public static func parse(hostfile text: String, path: String) throws -> [HostSlots] {
        var out: [HostSlots] = []
        for (i, raw) in text.split(separator: "\n", omittingEmptySubsequences: false).enumerated() {
            let line = raw.split(separator: "#", maxSplits: 1, omittingEmptySubsequences: false).first.map(String.init) ?? ""
            let fields = line.split(whereSeparator: { $0 == " " || $0 == "\t" }).map(String.init)
            guard let host = fields.first else { continue }
            var slots = 1
            for f in fields.dropFirst() {
                if f.hasPrefix("slots=") {
                    guard let n = Int(f.dropFirst(6)), n > 0 else {
                        throw PlanError(reason: "hostfile \(path), line \(i + 1): '\(f)' is not slots=<positive integer>")
                    }
                    slots = n
                } else if f.hasPrefix("max_slots=") {
                    continue
                } else {
                    throw PlanError(reason: "hostfile \(path), line \(i + 1): unknown field '\(f)' (expected 'host slots=N')")
                }
            }
            out.append(HostSlots(host: host, slots: slots))
        }
        if out.isEmpty { throw PlanError(reason: "hostfile \(path) names no hosts") }
        return out
    }
}

/// Why a parallel configuration cannot run.
public struct PlanError: Error, CustomStringConvertible {
    public let reason: String
    public var description: String { "plan refused: \(reason)" }
}

/// How a training job is laid out over ranks and hosts: a DP x PP x SP grid with the rank
/// order of Megatron-LM (SP fastest, then DP, PP outermost), layers assigned to pipeline
/// stages by estimated cost, the sequence split over SP ranks, ranks mapped to hosts.
public struct ParallelPlan: Sendable {
    public struct Stage: Sendable {
        public var index: Int
        /// Decoder layers of each of the stage's virtual stages (one range without interleaving).
        public var chunks: [Range<Int>]
        public var hasEmbedding: Bool
        public var hasHead: Bool
        /// Estimated forward GFLOP per step for this stage's share of one micro-batch stream.
        public var cost: Double
        public var parameters: Int
    }

    public let world: Int
    public let dataParallel: Int
    public let pipelineParallel: Int
    public let sequenceParallel: Int
    public let stages: [Stage]
    public let hosts: [String]
    /// Host of each rank.
    public let rankHosts: [String]
    public let microBatches: Int
    /// Virtual stages per pipeline stage (interleaved 1F1B; 1 otherwise).
    public let virtualStages: Int
    public let seqLen: Int
    public let layout: String
    public let memoryPerRankBytes: [Int]
    /// Ranks each stage's AdamW state is sharded over (ZeRO-1: the stage's data- and
    /// sequence-parallel ranks; 1 without).
    public var optimizerShards = 1

    /// Pipeline bubble of GPipe / 1F1B, (p - 1) / (m + p - 1); with v virtual stages per
    /// stage (interleaved 1F1B), (p - 1) / (v m + p - 1).
    /// The largest point-to-point tag a step sends (set by `Trainer.plan`; nil without
    /// sequence or pipeline parallelism).
    public var largestMessageTag: Int?

    public var bubbleFraction: Double {
        Double(pipelineParallel - 1) / Double(virtualStages * microBatches + pipelineParallel - 1)
    }

    /// The model part the ranks of stage `stage` hold.
    public func part(stage: Int, of c: LlamaConfig) -> ModelPart { .stage(chunks: stages[stage].chunks, of: c) }

    /// Coordinates of a rank in the grid.
    public func coordinates(rank: Int) -> (pp: Int, dp: Int, sp: Int) {
        (rank / (dataParallel * sequenceParallel), (rank / sequenceParallel) % dataParallel, rank % sequenceParallel)
    }

    /// Plans `world` ranks; throws `PlanError` naming the reason when impossible.
    public static func make(model c: LlamaConfig, world: Int, sequenceParallel sp: Int, pipelineParallel pp: Int,
                            layout: String, seqLen: Int, globalSequences: Int, microBatches: Int,
                            schedule: String = "gpipe", virtualStages v: Int = 1, hosts: [HostSlots]?, zero: Int = 0) throws -> ParallelPlan {
        guard world >= 1 else { throw PlanError(reason: "the world size must be at least 1") }
        guard sp >= 1, pp >= 1, world % (sp * pp) == 0 else {
            throw PlanError(reason: "world size \(world) is not a multiple of pipeline_parallel (\(pp)) x sequence_parallel (\(sp)) = \(sp * pp)")
        }
        guard pp <= c.numHiddenLayers else {
            throw PlanError(reason: "\(pp) pipeline stages for \(c.numHiddenLayers) layers: every stage needs at least one layer")
        }
        guard v >= 1 else { throw PlanError(reason: "virtual_stages must be at least 1") }
        if schedule == "interleaved" && v < 2 {
            throw PlanError(reason: "the interleaved schedule needs virtual_stages of 2 or more (with 1 it is 1F1B: use schedule: 1f1b)")
        }
        // Pipeline messages are tagged by receiving piece and micro-batch; MPI guarantees tags up to 32767.
        guard 2 * pp * v * microBatches <= 32767 else {
            throw PlanError(reason: "\(pp) stages x \(v) pieces x \(microBatches) micro-batches is too many pipeline messages to tag (at most 16383)")
        }
        if v > 1 {
            guard schedule == "interleaved" else {
                throw PlanError(reason: "virtual_stages \(v) needs schedule: interleaved (GPipe and 1F1B run one stage per rank)")
            }
            guard pp * v <= c.numHiddenLayers else {
                throw PlanError(reason: "\(pp) stages x \(v) virtual stages = \(pp * v) pieces for \(c.numHiddenLayers) layers: every piece needs at least one layer")
            }
            guard pp > 1, microBatches % pp == 0 else {
                throw PlanError(reason: "the interleaved schedule needs several stages and micro_batches (\(microBatches)) a multiple of the \(pp) stages")
            }
        }
        let parts = sp == 1 ? 1 : layout == "zigzag" ? 2 * sp : sp
        guard seqLen % parts == 0, seqLen >= parts else {
            throw PlanError(reason: "a sequence of \(seqLen) tokens cannot be split into \(parts) equal \(layout) chunks for \(sp) sequence-parallel ranks")
        }
        let dp = world / (sp * pp)
        guard globalSequences >= dp, globalSequences % dp == 0 else {
            throw PlanError(reason: "a global batch of \(globalSequences) sequences does not split over \(dp) data-parallel replicas")
        }
        var hostNames: [String] = []
        var rankHosts: [String] = []
        if let hosts {
            let slots = hosts.reduce(0) { $0 + $1.slots }
            guard slots >= world else {
                throw PlanError(reason: "the hostfile has \(slots) slots for \(world) ranks (\(hosts.map { "\($0.host) slots=\($0.slots)" }.joined(separator: ", ")))")
            }
            // Fill hosts in order, so consecutive ranks (an SP group first) share a host when they fit.
            for h in hosts { for _ in 0..<h.slots where rankHosts.count < world { rankHosts.append(h.host) } }
            hostNames = hosts.map(\.host)
        } else {
            rankHosts = Array(repeating: "localhost", count: world)
            hostNames = ["localhost"]
        }
        // Per-layer cost (forward FLOPs per token); the embedding is a gather, the head a matmul.
        let tokens = Double(globalSequences * seqLen) / Double(dp)
        let layerCost = (c.forwardFLOPs(tokens: 1, seqLen: seqLen) - 2 * Double(c.hiddenSize * c.vocabSize)) / Double(c.numHiddenLayers)
        let headCost = 2 * Double(c.hiddenSize * c.vocabSize)
        let embedCost = Double(c.hiddenSize) * 2
        // pp x v contiguous pieces; stage s runs pieces s, pp + s, 2 pp + s, ... (Megatron's interleaving).
        let pieces = partition(layers: c.numHiddenLayers, stages: pp * v, layerCost: layerCost, firstExtra: embedCost, lastExtra: headCost)
        let perLayerParams = (c.parameterCount - c.vocabSize * c.hiddenSize * (c.tieWordEmbeddings ? 1 : 2) - c.hiddenSize) / c.numHiddenLayers
        var stages: [Stage] = []
        for i in 0..<pp {
            let chunks = stride(from: i, to: pp * v, by: pp).map { pieces[$0] }
            let layerCount = chunks.reduce(0) { $0 + $1.count }
            var cost = Double(layerCount) * layerCost
            var params = layerCount * perLayerParams
            if i == 0 { cost += embedCost; params += c.vocabSize * c.hiddenSize }
            if i == pp - 1 { cost += headCost; params += c.hiddenSize + (c.tieWordEmbeddings && pp > 1 ? c.vocabSize * c.hiddenSize : (c.tieWordEmbeddings ? 0 : c.vocabSize * c.hiddenSize)) }
            stages.append(Stage(index: i, chunks: chunks, hasEmbedding: i == 0, hasHead: i == pp - 1, cost: cost * tokens / 1e9, parameters: params))
        }
        // Memory: weights, gradients, AdamW moments (16 bytes per parameter; with ZeRO-1 the
        // moments are split over the stage's dp x sp ranks: 8 + 8 / (dp sp) bytes) plus the saved
        // activations of the micro-batches in flight: all of them under GPipe (or without
        // stages, one at a time), at most p - stage under 1F1B, and under interleaving the
        // warm-up's (p - stage - 1) x 2 + (v - 1) x p + 1 pieces of 1 / v of the stage's layers.
        let localTokens = Double(globalSequences / dp) * Double(seqLen / sp)
        let actPerLayerToken = Double(6 * c.hiddenSize + 3 * c.numAttentionHeads * c.resolvedHeadDim + 4 * c.intermediateSize) * 4
        let memory = (0..<world).map { rank -> Int in
            let stage = stages[rank / (dp * sp)]
            let layerCount = Double(stage.chunks.reduce(0) { $0 + $1.count })
            let inFlight: Double = pp == 1 ? 1
                : schedule == "1f1b" ? Double(min(microBatches, pp - stage.index))
                : schedule == "interleaved" ? Double(min(microBatches * v, (pp - stage.index - 1) * 2 + (v - 1) * pp + 1)) / Double(v)
                : Double(microBatches)
            let act = actPerLayerToken * layerCount * localTokens * inFlight
            // Logits (and their gradient) are kept until the backward of each head pass in flight.
            let logits = stage.hasHead ? localTokens * Double(c.vocabSize) * 8 * max(1, inFlight.rounded(.up)) : 0
            let perParameter = zero >= 1 ? 8 + 8 / Double(dp * sp) : 16
            return Int(Double(stage.parameters) * perParameter + act + logits)
        }
        var plan = ParallelPlan(world: world, dataParallel: dp, pipelineParallel: pp, sequenceParallel: sp, stages: stages,
                            hosts: hostNames, rankHosts: rankHosts, microBatches: microBatches, virtualStages: v, seqLen: seqLen, layout: layout,
                            memoryPerRankBytes: memory)
        plan.optimizerShards = zero >= 1 ? dp * sp : 1
        return plan
    }

    /// Contiguous layer ranges minimising the most expensive stage (linear partition).
    static func partition(layers: Int, stages: Int, layerCost: Double, firstExtra: Double, lastExtra: Double) -> [Range<Int>] {
        // best[s][l]: minimal max cost placing the first l layers on the first s stages.
        let inf = Double.infinity
        var best = Array(repeating: Array(repeating: inf, count: layers + 1), count: stages + 1)
        var cut = Array(repeating: Array(repeating: 0, count: layers + 1), count: stages + 1)
        best[0][0] = 0
        for s in 1...stages {
            for l in s...layers {
                for k in (s - 1)..<l {
                    var cost = Double(l - k) * layerCost
                    if s == 1 { cost += firstExtra }
                    if s == stages && l == layers { cost += lastExtra }
                    let v = max(best[s - 1][k], cost)
                    if v < best[s][l] { best[s][l] = v; cut[s][l] = k }
                }
            }
        }
        var ranges: [Range<Int>] = []
        var l = layers
        for s in stride(from: stages, through: 1, by: -1) {
            let k = cut[s][l]
            ranges.append(k..<l)
            l = k
        }
        return ranges.reversed()
    }

    /// Human-readable plan.
    public func lines() -> [String] {
        var out = [String(format: "plan: %d ranks = DP %d x PP %d x SP %d (rank order: SP fastest, then DP, PP outermost)",
                          world, dataParallel, pipelineParallel, sequenceParallel)]
        for s in stages {
            let extras = [s.hasEmbedding ? "embedding" : nil, s.hasHead ? "norm + lm_head" : nil].compactMap { $0 }
            let layers = s.chunks.map { "\($0.lowerBound)-\($0.upperBound - 1)" }.joined(separator: " and ")
            out.append(String(format: "  stage %d: layers %@%@, %.1f GFLOP forward per step per replica, %.2fM parameters",
                              s.index, layers,
                              extras.isEmpty ? "" : " + " + extras.joined(separator: " + "), s.cost, Double(s.parameters) / 1e6))
        }
        if sequenceParallel > 1 {
            let parts = layout == "zigzag" ? 2 * sequenceParallel : sequenceParallel
            let c = seqLen / parts
            let owners = (0..<sequenceParallel).map { r -> String in
                layout == "zigzag" ? "sp\(r): tokens \(r * c)-\((r + 1) * c - 1) and \((2 * sequenceParallel - 1 - r) * c)-\((2 * sequenceParallel - r) * c - 1)"
                                   : "sp\(r): tokens \(r * c)-\((r + 1) * c - 1)"
            }
            out.append("  sequence (\(seqLen) tokens, \(layout)): " + owners.joined(separator: "; "))
        }
        var groupsSplit = 0
        for g in stride(from: 0, to: world, by: sequenceParallel) where Set(rankHosts[g..<(g + sequenceParallel)]).count > 1 { groupsSplit += 1 }
        for host in hosts {
            let ranks = rankHosts.indices.filter { rankHosts[$0] == host }
            if ranks.isEmpty { continue }
            out.append("  host \(host): ranks \(ranks.map(String.init).joined(separator: ","))")
        }
        if sequenceParallel > 1 {
            out.append(groupsSplit == 0 ? "  every sequence-parallel group stays inside one host"
                                        : "  \(groupsSplit) sequence-parallel group(s) span hosts (their ring traffic crosses the network)")
        }
        if virtualStages > 1 {
            out.append(String(format: "  pipeline bubble (interleaved 1F1B, v=%d): (p-1)/(v m+p-1) = %d/%d = %.1f%%", virtualStages,
                              pipelineParallel - 1, virtualStages * microBatches + pipelineParallel - 1, 100 * bubbleFraction))
        } else {
            out.append(String(format: "  pipeline bubble (GPipe/1F1B): (p-1)/(m+p-1) = %d/%d = %.1f%%", pipelineParallel - 1,
                              microBatches + pipelineParallel - 1, 100 * bubbleFraction))
        }
        let mem = memoryPerRankBytes.map { Double($0) / 1_048_576 }
        out.append(String(format: "  estimated memory per rank: %.0f-%.0f MiB (weights, gradients, AdamW state%@, activations)",
                          mem.min() ?? 0, mem.max() ?? 0, optimizerShards > 1 ? " sharded over \(optimizerShards) ranks (ZeRO-1)" : ""))
        if let tag = largestMessageTag {
            out.append("  message tags: up to \(tag)" + (tag <= MessageTag.portableUpperBound ? " (within the 32767 every MPI accepts)"
                                                                                       : " (past the 32767 every MPI accepts; Open MPI accepts 2147483647)"))
        }
        return out
    }
}
