import Foundation
import TorusComm
import TorusModel
import TorusParallel
import TorusTensor
import TorusTrace

/// One optimizer step's figures, as printed and written to the metrics file.
public struct StepReport: Codable, Sendable {
    public var step: Int
    /// Tokens in this step's windows (every rank's, padding included).
    public var tokens: Int
    public var loss: Float
    public var lr: Double
    public var gradNorm: Double
    public var tokensPerSecond: Double
    public var gflops: Double
    public var stepSeconds: Double
    public var allReduceWaitSeconds: Double
    public var etaSeconds: Double
}

/// Data-parallel training of a LLaMA model with AdamW: each rank computes gradients on its
/// share of every micro-batch; the last micro-batch's backward starts bucketed all-reduces as
/// gradients complete; then clipping, the schedule and the update, identical on every rank.
public final class Trainer {
    public let model: LlamaModel
    public let options: TrainOptions
    public let comm: Communicator
    /// The unsharded optimizer (nil with ZeRO-1, where `sharded` holds this rank's part).
    public let optimizer: AdamW?
    /// ZeRO-1: this rank's shard of the AdamW state (nil without).
    public let sharded: ShardedAdamW?
    let tokens: [Int32]
    let sampler: BatchSampler
    let gradients: ParameterStore
    let reducer: GradientReducer
    let shards: ShardedGradients
    /// This rank's data-parallel replica and the number of replicas (world / SP size).
    public let dataRank: Int, dataRanks: Int
    /// Attention across the sequence-parallel group (nil without sequence parallelism).
    let sequenceAttention: SequenceParallelAttention?
    /// Pipeline stages, this rank's stage and its decoder layers.
    public let stages: Int, stage: Int
    /// This stage's decoder layers, one range per virtual stage (one without interleaving).
    public let stageChunks: [Range<Int>]
    /// Ranks between consecutive stages of the same replica and SP position.
    let stageStride: Int
    /// The layout of every rank: stages, their layers, hosts.
    public let plan: ParallelPlan
    /// The ranks of this stage (all replicas and SP positions): gradient reduction, weight agreement.
    let stageGroup: Communicator
    /// The ranks at this replica and SP position, one per stage: the global gradient norm.
    let pipelineGroup: Communicator?
    /// With tied embeddings over several stages: this rank and its peer on the other end of
    /// the pipeline, which hold the same embedding matrix and add their gradients of it.
    let embeddingGroup: Communicator?
    /// Where checkpoints and metrics go (nil: nowhere).
    public let outDir: String?
    public private(set) var step = 0
    public private(set) var lastCheckpoint: String?
    /// The `tokenizer.json` the model reads, copied into every model directory the trainer
    /// writes (checkpoints and `saveModel`) so that each loads as it is; nil: the byte tokenizer.
    public var tokenizerFile: String?
    /// Test hook: (rank, step) at which this process kills itself, to test failure handling.
    public var faultInjection: (rank: Int, step: Int)?
    /// Test hook: the step at which a weight is set to NaN on every rank.
    public var faultNaNStep: Int?
    /// Which tokens of the stream are targets (nil: all); the others carry no loss.
    public var targetMask: [Bool]? {
        didSet { precondition(targetMask.map { $0.count == tokens.count } ?? true, "one target flag per training token") }
    }

    public init(model: LlamaModel, tokens: [Int32], options: TrainOptions, comm: Communicator, outDir: String?) throws {
        guard options.steps >= 1 else { throw TrainError.invalid("steps must be at least 1") }
        guard options.seqLen >= 1, options.seqLen <= model.config.maxPositionEmbeddings else {
            throw TrainError.invalid("seq_len \(options.seqLen) must be in 1...\(model.config.maxPositionEmbeddings) (max_position_embeddings)")
        }
        guard options.microBatches >= 1 else { throw TrainError.invalid("micro_batches must be at least 1") }
        let sp = options.sequenceParallel?.size ?? 1
        guard sp >= 1, comm.size % sp == 0 else {
            throw TrainError.invalid("sequence_parallel.size \(sp) does not divide the \(comm.size) ranks (world = data x sequence parallel)")
        }
        var spLayout: SequenceLayout?
        var spMethod: SequenceParallelMethod?
        if let spo = options.sequenceParallel {
            guard let kind = SequenceLayoutKind(rawValue: spo.layout) else { throw SequenceParallelError.unknownLayout(spo.layout) }
            spMethod = try SequenceParallelMethod(name: spo.method)
            spLayout = try SequenceLayout(kind: kind, ranks: sp, length: options.seqLen)
        }
        // The plan also checks every tag of a step against this MPI library's MPI_TAG_UB.
        let plan = try Self.plan(config: model.config, options: options, worldSize: comm.size, tagUpperBound: comm.tagUpperBound)
        let pp = plan.pipelineParallel, dataRanks = plan.dataParallel, grid = plan.coordinates(rank: comm.rank)
        let expectedPart = plan.part(stage: grid.pp, of: model.config)
        guard model.part == expectedPart else {
            throw TrainError.invalid("rank \(comm.rank) holds \(model.part) of the model; its pipeline stage needs \(expectedPart)")
        }
        guard tokens.count > options.seqLen + 1 else {
            throw TrainError.invalid("the training data has \(tokens.count) tokens; a window needs \(options.seqLen + 1)")
        }
        if let bad = tokens.firstIndex(where: { $0 < 0 || Int($0) >= model.config.vocabSize }) {
            throw TrainError.invalid("training token \(bad) is \(tokens[bad]), outside the vocabulary [0, \(model.config.vocabSize))")
        }
        self.model = model
        self.tokens = tokens
        self.options = options
        self.comm = comm
        self.outDir = outDir
        self.sampler = BatchSampler(tokenCount: tokens.count, seqLen: options.seqLen, seed: options.seed)
        self.gradients = model.makeGradients()
        self.plan = plan
        let stageStride = dataRanks * sp, stage = grid.pp
        let last = stage == pp - 1
        // Gradients of a stage's weights are averaged over the ranks of that stage only.
        self.stageGroup = pp == 1 ? comm : try comm.split(color: stage, key: comm.rank)
        self.pipelineGroup = pp == 1 ? nil : try comm.split(color: comm.rank % stageStride, key: stage)
        if pp > 1 && model.config.tieWordEmbeddings {
            let ends = stage == 0 || last
            let group = try comm.split(color: ends ? comm.rank % stageStride : comm.size + comm.rank, key: stage)
            self.embeddingGroup = ends ? group : nil
        } else {
            self.embeddingGroup = nil
        }
        let reducer = GradientReducer(comm: stageGroup, gradients: gradients, bucketBytes: options.bucketBytes)
        if (options.zero ?? 0) >= 1 {
            guard embeddingGroup == nil else {
                throw TrainError.invalid("train.zero: 1 with tied embeddings over pipeline stages is not supported (the tied gradient is added across stages after the reduction)")
            }
            let sharded = ShardedAdamW(parameters: model.parameters, gradients: gradients, buckets: reducer.buckets, comm: stageGroup,
                                       options: options.adamw)
            reducer.sharded = sharded
            self.sharded = sharded
            self.optimizer = nil
        } else {
            self.sharded = nil
            self.optimizer = AdamW(parameters: model.parameters, options: options.adamw)
        }
        self.reducer = reducer
        self.stages = pp
        self.stageStride = stageStride
        self.stage = stage
        self.stageChunks = plan.stages[stage].chunks
        self.shards = ShardedGradients(main: gradients)
        self.dataRanks = dataRanks
        self.dataRank = grid.dp
        if let spLayout, let spMethod {
            // Megatron-style order: the ranks of one sequence-parallel group are consecutive.
            let group = try comm.split(color: comm.rank / sp, key: comm.rank % sp)
            sequenceAttention = try spMethod.make(comm: group, layout: spLayout, shape: model.config.attentionShape, causal: true)
        } else {
            sequenceAttention = nil
        }
    }

    /// The DP x PP x SP plan for `options` on `worldSize` ranks (placed on `hosts` when given);
    /// throws `PlanError` with the reason when it cannot run.
    public static func plan(config: LlamaConfig, options: TrainOptions, worldSize: Int, hosts: [HostSlots]? = nil,
                            tagUpperBound: Int = Int(Int32.max)) throws -> ParallelPlan {
        var plan = try ParallelPlan.make(model: config, world: worldSize, sequenceParallel: options.sequenceParallel?.size ?? 1,
                              pipelineParallel: options.pipelineStages ?? 1,
                              layout: options.sequenceParallel?.layout ?? "zigzag", seqLen: options.seqLen,
                              globalSequences: options.globalSequences, microBatches: options.microBatches,
                              schedule: options.pipelineSchedule ?? "gpipe",
                              virtualStages: options.pipelineVirtualStages ?? 1, hosts: hosts, zero: options.zero ?? 0)
        // Every point-to-point tag of a step: the sequence-parallel method's and the pipeline's.
        var streams: [(kind: MessageKind, count: Int)] = []
        if let sp = options.sequenceParallel, sp.size > 1 {
            let method = try SequenceParallelMethod(name: sp.method)
            streams += method.messages(groupSize: sp.size)
            try method.checkTags(groupSize: sp.size, upperBound: tagUpperBound)
        }
        if plan.pipelineParallel > 1 {
            try PipelineSchedule.checkTags(stages: plan.pipelineParallel, virtualStages: plan.virtualStages,
                                           microBatches: plan.microBatches, upperBound: tagUpperBound)
            streams += [(.pipelineGradients, plan.pipelineParallel * plan.virtualStages * plan.microBatches)]
        }
        plan.largestMessageTag = streams.map { MessageTag.of($0.kind, $0.count - 1) }.max()
        return plan
    }

    /// The part of the model that rank `rank` holds: its pipeline stage's layers (the embedding
    /// on the first stage, norm and head on the last), or the whole model without stages.
    public static func modelPart(config: LlamaConfig, options: TrainOptions, worldSize: Int, rank: Int) throws -> ModelPart {
        let plan = try plan(config: config, options: options, worldSize: worldSize)
        let stage = plan.coordinates(rank: rank).pp
        return plan.part(stage: stage, of: config)
    }

    /// Monotonic clock (ns) when the last step's final all-reduce wait began and ended.
    public var lastReduceWait: (start: UInt64, end: UInt64) { reducer.lastWaitInterval }

    /// Number of all-reduce buckets the gradients are split into.
    public var bucketCount: Int { reducer.buckets.count }

    /// Makes every rank start from the weights of its stage's first rank (and, with tied
    /// embeddings over several stages, the last stage from the first stage's embedding).
    public func synchronizeWeights() throws {
        try stageGroup.broadcast(model.parameters.flat, root: 0)
        if let embeddingGroup { try embeddingGroup.broadcast(model.weights.embed, root: 0) }
    }

    /// Continues from the newest complete checkpoint in `outDir`; returns its step (0 if none).
    @discardableResult
    public func resume() throws -> Int {
        // Every rank must continue from the same checkpoint (each stage reads only its part).
        var dir: String?
        try CollectiveWrite.agree(comm, "finding the checkpoint to resume from") {
            dir = try outDir.flatMap { try TrainingCheckpoint.latest(out: $0) }
        }
        let found = dir.flatMap { Int(($0 as NSString).lastPathComponent.dropFirst("step-".count)) } ?? 0
        let lo = try comm.allReduce([Double(found)], op: .min)[0], hi = try comm.allReduce([Double(found)], op: .max)[0]
        guard lo == hi else {
            throw TrainError.resume("ranks see different latest checkpoints (steps \(Int(lo)) to \(Int(hi))); do all ranks see the same output directory?")
        }
        guard let dir else { return 0 }
        // Checkpoints hold the full moments; with ZeRO-1 each rank keeps its part.
        let full = optimizer ?? AdamW(parameters: model.parameters, options: options.adamw)
        let state = try TrainingCheckpoint.load(dir: dir, model: model, optimizer: full)
        sharded?.restore(from: full)
        guard state.worldSize == comm.size else {
            throw TrainError.resume("\(dir) was written by \(state.worldSize) data-parallel ranks and this run has \(comm.size); resuming on a different world size is not supported (the batch split and data order would change)")
        }
        guard state.options.globalSequences == options.globalSequences, state.options.seqLen == options.seqLen,
              state.options.microBatches == options.microBatches, state.options.seed == options.seed,
              state.options.schedule == options.schedule, state.options.adamw == options.adamw,
              state.options.sequenceParallel == options.sequenceParallel,
              state.options.pipelineStages == options.pipelineStages, state.options.pipelineSchedule == options.pipelineSchedule,
              state.options.pipelineVirtualStages == options.pipelineVirtualStages else {
            throw TrainError.resume("\(dir) used a different batch, sequence length, micro-batch count, seed, learning-rate schedule, AdamW, sequence- or pipeline-parallel settings")
        }
        guard state.dataTokens == tokens.count else {
            throw TrainError.resume("\(dir) was trained on \(state.dataTokens) tokens; this data has \(tokens.count)")
        }
        step = state.step
        lastCheckpoint = dir
        return step
    }

    /// Runs one optimizer step and returns its report.
    public func trainStep() throws -> StepReport {
        let began = DispatchTime.now().uptimeNanoseconds
        step += 1
        Timeline.current?.step = step
        if let fault = faultInjection, fault.rank == comm.rank, fault.step == step {
            FileHandle.standardError.write(Data("rank \(comm.rank): fault injection: killing myself at step \(step)\n".utf8))
            kill(getpid(), SIGKILL)
        }
        if faultNaNStep == step, model.part.head { model.weights.finalNorm[0] = .nan }
        let progress = (options.progressMicroseconds ?? 0) > 0 ? ProgressThread(comm: comm, intervalMicroseconds: options.progressMicroseconds ?? 0) : nil
        progress?.start()
        defer { progress?.stop() }
        gradients.flat.fill(0)
        reducer.begin()
        let perRank = options.globalSequences / dataRanks
        // This rank's sequences are split over its threads; shard j takes sequences [start, end).
        // Sequence-parallel attention talks to other ranks, so it stays on one thread.
        let threadCount = sequenceAttention == nil && stages == 1 ? min(BLAS.threads, perRank) : 1
        let localLen = sequenceAttention?.layout.localCount ?? options.seqLen
        let localRows = sequenceAttention?.localPositions.map(Int.init)
        let bounds = (0...threadCount).map { $0 * perRank / threadCount }
        shards.begin(shards: threadCount)
        var lossSum: Float = 0
        let seqLen = localLen, scale = 1 / Float(options.microBatches)
        let attention = sequenceAttention
        var pipelineBatches: [(inputs: [Int32], targets: [Int32])] = []
        for micro in 0..<options.microBatches {
            var batch = sampler.batch(step: step, micro: micro, microBatches: options.microBatches,
                                      globalSequences: options.globalSequences, rank: dataRank, ranks: dataRanks, tokens: tokens,
                                      targetMask: targetMask)
            if let localRows {
                // Keep this rank's positions of every sequence.
                let full = batch
                batch.inputs = (0..<perRank).flatMap { j in localRows.map { full.inputs[j * options.seqLen + $0] } }
                batch.targets = (0..<perRank).flatMap { j in localRows.map { full.targets[j * options.seqLen + $0] } }
            }
            if stages > 1 {
                pipelineBatches.append(batch)
                continue
            }
            let last = micro == options.microBatches - 1
            if last {
                let reducer = self.reducer
                shards.watch { reducer.ready(offset: $0) }
            }
            var losses = [Float](repeating: 0, count: threadCount)
            var errors = [Error?](repeating: nil, count: threadCount)
            let model = self.model, shards = self.shards
            losses.withUnsafeMutableBufferPointer { lossOut in
                errors.withUnsafeMutableBufferPointer { errorOut in
                    Parallel.forEach(threadCount) { j in
                        let lo = bounds[j] * seqLen, hi = bounds[j + 1] * seqLen, n = bounds[j + 1] - bounds[j]
                        do {
                            lossOut[j] = try Timeline.measure("forward+backward micro \(micro) shard \(j)") { try model.loss(tokens: Array(batch.inputs[lo..<hi]), targets: Array(batch.targets[lo..<hi]),
                                                        batch: n, seqLen: seqLen, gradients: shards.store(j),
                                                        lossScale: scale * Float(n) / Float(perRank),
                                                        gradientsReady: last ? { shards.report(shard: j, offset: $0) } : nil,
                                                        attention: attention) }
                                * Float(n) / Float(perRank)
                        } catch { errorOut[j] = error }
                    }
                }
            }
            if let error = errors.compactMap({ $0 }).first { throw error }
            lossSum += losses.reduce(0, +)
        }
        if stages > 1 {
            lossSum += try runPipeline(batches: pipelineBatches, perRank: perRank, seqLen: seqLen, lossScale: scale, attention: attention)
        }
        try reducer.finish()
        if let embeddingGroup {
            // The first stage's lookup and the last stage's head both use the tied matrix: add.
            try Timeline.measure("tied embedding all-reduce", kind: .collective, bytes: model.weights.embed.count * 4) {
                try embeddingGroup.allReduce(gradients.tensor("model.embed_tokens.weight"))
            }
        }
        // Only the last stage computes the loss; average it over the replicas and SP ranks.
        let loss = Float(try comm.allReduce([Double(lossSum / Float(options.microBatches))])[0] / Double(comm.size / stages))
        guard loss.isFinite else { throw TrainError.nonFiniteLoss(step: step, loss: loss, lastCheckpoint: lastCheckpoint) }
        let norm = try gradientNorm()
        if options.clipNorm > 0 && norm > options.clipNorm {
            if let sharded { sharded.scale(by: Float(options.clipNorm / norm)) } else {
                VectorMath.scale(gradients.flat.pointer, count: gradients.count, by: Float(options.clipNorm / norm))
            }
        }
        let lr = options.schedule.rate(at: step)
        if let sharded {
            try sharded.update(parameters: model.parameters, lr: Float(lr))
        } else if let optimizer {
            Timeline.measure("AdamW") { optimizer.update(parameters: model.parameters, gradients: gradients, lr: Float(lr)) }
        }
        if options.checkWeightsEvery > 0 && step % options.checkWeightsEvery == 0 { try checkWeightsAgree() }
        let ended = DispatchTime.now().uptimeNanoseconds
        Timeline.current?.record("step \(step)", kind: .step, start: began, end: ended)
        let seconds = Double(ended - began) / 1e9
        let tokensPerStep = options.globalSequences * options.microBatches * options.seqLen
        let flops = 3 * model.config.forwardFLOPs(tokens: tokensPerStep, seqLen: options.seqLen)
        return StepReport(step: step, tokens: tokensPerStep, loss: loss, lr: lr, gradNorm: norm, tokensPerSecond: Double(tokensPerStep) / seconds,
                          gflops: flops / seconds / 1e9, stepSeconds: seconds, allReduceWaitSeconds: reducer.lastWaitSeconds,
                          etaSeconds: seconds * Double(options.steps - step))
    }

    /// One step's forwards and backwards on this pipeline stage; returns the summed loss of the
    /// micro-batches (non-zero on the stage holding the head only).
    ///
    /// With v virtual stages, piece c of stage s is virtual stage k = c p + s: its input comes
    /// from virtual stage k - 1 (the previous stage, or the last stage's previous piece for
    /// s = 0) and its output goes to k + 1. Tags name the receiving virtual stage and micro-batch.
    /// Sends are nonblocking; the receives of the next `receiveAhead` passes are posted before
    /// the current pass computes and are polled between passes (a pass itself makes no MPI
    /// calls, so large transfers move during compute only with `progressMicroseconds`).
    func runPipeline(batches: [(inputs: [Int32], targets: [Int32])], perRank: Int, seqLen: Int, lossScale: Float,
                     attention: SequenceAttention?) throws -> Float {
        let m = batches.count, v = stageChunks.count, last = stages * v - 1
        var passes: [Int: LlamaModel.StagePass] = [:]
        var sends: [Request] = []
        var lossSum: Float = 0
        let order = PipelineSchedule.order(schedule: options.pipelineSchedule ?? "gpipe", stages: stages, stage: stage,
                                           microBatches: m, virtualStages: v)
        /// The rank running virtual stage k (same replica and SP position as this rank).
        func rank(ofVirtual k: Int) -> Int { comm.rank % stageStride + (k % stages) * stageStride }
        func tag(_ receiver: Int, _ micro: Int, forward: Bool) -> Int {
            PipelineSchedule.tag(receiver: receiver, micro: micro, microBatches: m, forward: forward)
        }
        // What pass i receives (its input, or the gradient of its output), posted ahead.
        var received: [Int: (buffer: Tensor, request: Request)] = [:]
        let receiveAhead = 2
        func postReceive(_ i: Int) throws {
            guard i < order.count, received[i] == nil else { return }
            let op = order[i], k = op.chunk * stages + stage
            if op.forward ? k == 0 : k == last { return }
            let t = Tensor(zeros: [perRank * seqLen, model.config.hiddenSize])
            let from = rank(ofVirtual: op.forward ? k - 1 : k + 1)
            received[i] = (t, try comm.irecv(t, from: from, tag: tag(k, op.micro, forward: op.forward)))
        }
        func take(_ i: Int) throws -> Tensor? {
            guard let r = received.removeValue(forKey: i) else { return nil }
            try r.request.wait()
            return r.buffer
        }
        let reducer = self.reducer
        for (index, op) in order.enumerated() {
            for j in index...(index + receiveAhead) { try postReceive(j) }
            let k = op.chunk * stages + stage, micro = op.micro
            if op.forward {
                // Take the previous virtual stage's activations, hand ours on.
                let input = try take(index)
                let pass = try Timeline.measure("stage \(stage) forward micro \(micro)" + (v > 1 ? " piece \(op.chunk)" : "")) {
                    try model.stageForward(tokens: batches[micro].inputs, input: input, batch: perRank, seqLen: seqLen,
                                           layers: stageChunks[op.chunk], attention: attention)
                }
                if k < last { sends.append(try comm.isend(pass.output, to: rank(ofVirtual: k + 1), tag: tag(k + 1, micro, forward: true))) }
                passes[op.chunk * m + micro] = pass
            } else {
                guard let pass = passes.removeValue(forKey: op.chunk * m + micro) else {
                    throw TrainError.invalid("pipeline schedule ran backward of micro-batch \(micro) (piece \(op.chunk)) before its forward")
                }
                let dOutput = try take(index)
                let r = try Timeline.measure("stage \(stage) backward micro \(micro)" + (v > 1 ? " piece \(op.chunk)" : "")) {
                    // The step's last backward starts the stage's gradient reduction bucket by bucket.
                    try model.stageBackward(pass, targets: k == last ? batches[micro].targets : nil, dOutput: dOutput,
                                            gradients: gradients, lossScale: lossScale,
                                            gradientsReady: index == order.count - 1 ? { reducer.ready(offset: $0) } : nil,
                                            attention: attention)
                }
                lossSum += r.loss
                if k > 0, let dInput = r.dInput {
                    sends.append(try comm.isend(dInput, to: rank(ofVirtual: k - 1), tag: tag(k - 1, micro, forward: false)))
                }
            }
            sends = try sends.filter { try !$0.test() }
            for r in received.values { _ = try r.request.test() }
        }
        try Request.waitAll(sends)
        return lossSum
    }

    /// L2 norm of the whole model's averaged gradient: each stage's sum of squares (a tied
    /// embedding counted once, on the first stage), added over the stages.
    func gradientNorm() throws -> Double {
        if let sharded {
            // Each rank holds part of the stage's averaged gradient.
            var sum = try stageGroup.allReduce([sharded.sumOfSquares()])[0]
            if let pipelineGroup { sum = try pipelineGroup.allReduce([sum])[0] }
            return sum.squareRoot()
        }
        var sum = VectorMath.sumOfSquares(gradients.flat.pointer, count: gradients.count)
        if embeddingGroup != nil && stage != 0 {
            let e = gradients.tensor("model.embed_tokens.weight")
            sum -= VectorMath.sumOfSquares(e.pointer, count: e.count)
        }
        if let pipelineGroup { sum = try pipelineGroup.allReduce([sum])[0] }
        return sum.squareRoot()
    }

    /// Fails loudly when ranks that should hold the same weights do not: every rank of a
    /// stage, and the two copies of a tied embedding.
    public func checkWeightsAgree() throws {
        func hash(_ t: Tensor) -> UInt64 {
            var h: UInt64 = 0xcbf2_9ce4_8422_2325
            for i in 0..<t.count { h = (h ^ UInt64(t.pointer[i].bitPattern)) &* 0x100_0000_01b3 }
            return h
        }
        func agree(_ h: UInt64, over group: Communicator) throws -> Bool {
            guard group.size > 1 else { return true }
            // Four 16-bit pieces are exact in Double; compare min and max across ranks.
            let parts = (0..<4).map { Double((h >> (16 * UInt64($0))) & 0xFFFF) }
            return try group.allReduce(parts, op: .min) == group.allReduce(parts, op: .max)
        }
        let local = hash(model.parameters.flat)
        if try !agree(local, over: stageGroup) {
            throw TrainError.weightsDiverged(step: step, detail: "parameter hash of stage \(stage) on rank \(comm.rank) is \(String(local, radix: 16)); the ranks of the stage disagree")
        }
        if let embeddingGroup, try !agree(hash(model.weights.embed), over: embeddingGroup) {
            throw TrainError.weightsDiverged(step: step, detail: "the tied embedding differs between the first and the last pipeline stage (rank \(comm.rank))")
        }
    }

    /// Whether this rank writes its stage's files (the stage's first rank).
    var writesStage: Bool { comm.rank % stageStride == 0 }

    /// Writes a checkpoint of the current step; every stage's first rank writes that stage's
    /// files and all ranks wait until it is complete.
    public func checkpoint() throws {
        guard let outDir else { return }
        let dir = TrainingCheckpoint.directory(out: outDir, step: step)
        let shards = StageShards(config: model.config, plan: plan)
        let state = TrainerState(step: step, worldSize: comm.size, options: options, dataTokens: tokens.count)
        // With ZeRO-1 the stage's first rank (the one that writes) gathers the full moments.
        let full = try optimizer ?? sharded?.gathered(parameters: model.parameters)
        try CollectiveWrite.directory(dir, comm: comm, subdirectories: ["model"]) { temp in
            guard writesStage else { return }
            guard let full else { throw TrainError.checkpoint("rank \(comm.rank) writes stage \(stage) but holds no gathered optimizer state") }
            try TrainingCheckpoint.writeStage(into: temp, stage: stage, shards: shards, model: model, optimizer: full)
        } complete: { temp in
            try TrainingCheckpoint.complete(temp, shards: shards, state: state, tokenizerFile: tokenizerFile)
        }
        try CollectiveWrite.agree(comm, "publishing \(dir)") {
            if comm.rank == 0 { try TrainingCheckpoint.publish(out: outDir, dir: dir) }
        }
        lastCheckpoint = dir
    }

    /// Writes the model as a Hugging Face directory at `directory` (sharded by stage when
    /// there are several; every stage's first rank writes its shard).
    public func saveModel(to directory: String) throws {
        let shards = StageShards(config: model.config, plan: plan)
        try CollectiveWrite.directory(directory, comm: comm) { temp in
            if writesStage {
                try HFCheckpoint.writeShard(model, names: shards.names(stage: stage),
                                            to: (temp as NSString).appendingPathComponent(shards.modelFile(stage: stage)))
            }
        } complete: { temp in
            try shards.writeIndex(into: temp, tokenizerFile: tokenizerFile)
        }
    }
}
