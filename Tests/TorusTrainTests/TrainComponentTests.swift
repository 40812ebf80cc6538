import Foundation
import Testing
import TorusModel
import TorusTrain

@Suite struct TrainComponentTests {
    @Test func scheduleWarmsUpThenDecaysToTheMinimum() {
        let s = LearningRateSchedule(peak: 1e-3, minimum: 1e-4, warmupSteps: 10, totalSteps: 110)
        #expect(abs(s.rate(at: 1) - 1e-4) < 1e-12)
        #expect(abs(s.rate(at: 10) - 1e-3) < 1e-12)
        #expect(abs(s.rate(at: 60) - 5.5e-4) < 1e-12)   // half-way through the cosine
        #expect(abs(s.rate(at: 110) - 1e-4) < 1e-12)
        #expect(abs(s.rate(at: 500) - 1e-4) < 1e-12)
    }

    /// Two AdamW steps against a Double reference of the algorithm (decay on matrices only).
    @Test func adamWMatchesReference() {
        let store = ParameterStore(layout: [("w", [2, 2]), ("norm", [2])])
        let grads = store.zerosLike()
        let p0: [Float] = [0.5, -0.3, 0.2, 0.1, 1.0, 1.0]
        for i in 0..<6 { store.flat[i] = p0[i] }
        let opt = AdamW(parameters: store, options: AdamWOptions(beta1: 0.9, beta2: 0.99, eps: 1e-8, weightDecay: 0.1))
        var p = p0.map(Double.init), m = [Double](repeating: 0, count: 6), v = m
        for (step, g) in [[0.1, -0.2, 0.3, 0.0, 0.5, -0.5], [0.2, 0.1, -0.1, 0.4, 0.1, 0.0]].enumerated() {
            for i in 0..<6 { grads.flat[i] = Float(g[i]) }
            opt.update(parameters: store, gradients: grads, lr: 0.01)
            let t = Double(step + 1)
            for i in 0..<6 {
                m[i] = 0.9 * m[i] + 0.1 * g[i]
                v[i] = 0.99 * v[i] + 0.01 * g[i] * g[i]
                let mhat = m[i] / (1 - pow(0.9, t)), vhat = v[i] / (1 - pow(0.99, t))
                if i < 4 { p[i] *= 1 - 0.01 * 0.1 }
                p[i] -= 0.01 * mhat / (vhat.squareRoot() + 1e-8)
            }
        }
        for i in 0..<6 { #expect(abs(Double(store.flat[i]) - p[i]) < 1e-6, "parameter \(i)") }
        #expect(opt.step == 2)
    }

    @Test func samplerVisitsEveryWindowOncePerEpoch() {
        let s = BatchSampler(tokenCount: 1001, seqLen: 10, seed: 3)
        #expect(s.windowCount == 100)
        for epoch in 0..<3 {
            let starts = (0..<100).map { s.windowStart(globalIndex: epoch * 100 + $0) }
            #expect(Set(starts) == Set((0..<100).map { $0 * 10 }))
        }
        let tokens = (0..<1001).map { Int32($0 % 256) }
        // The two halves of a global batch on two ranks are the one-rank batch.
        let whole = s.batch(step: 3, micro: 1, microBatches: 2, globalSequences: 4, rank: 0, ranks: 1, tokens: tokens)
        let a = s.batch(step: 3, micro: 1, microBatches: 2, globalSequences: 4, rank: 0, ranks: 2, tokens: tokens)
        let b = s.batch(step: 3, micro: 1, microBatches: 2, globalSequences: 4, rank: 1, ranks: 2, tokens: tokens)
        #expect(a.inputs + b.inputs == whole.inputs && a.targets + b.targets == whole.targets)
        #expect(zip(whole.inputs, whole.targets).allSatisfy { ($0 + 1) % 256 == $1 % 256 })
    }

    @Test func synthesisedAnswersAreInTheDocuments() {
        let corpus = SyntheticCorpus(seed: 1)
        var twoHop = 0
        for i in 0..<200 {
            let e = corpus.example(i, split: "heldout")
            #expect(e.prompt.hasSuffix("A:"))
            #expect(e.prompt.contains(" \(e.answer)."), "answer \(e.answer) not in \(e.prompt)")
            if e.hops == 2 { twoHop += 1 }
        }
        #expect(twoHop > 40)
        #expect(corpus.example(0, split: "train") != corpus.example(0, split: "heldout"))
        #expect(corpus.example(5, split: "train") == SyntheticCorpus(seed: 1).example(5, split: "train"))
    }
}

@Suite struct PipelineScheduleTests {
    func names(_ o: [PipelineOp]) -> [String] { o.map(\.description) }

    @Test func gpipeRunsAllForwardsFirst() {
        let o = PipelineSchedule.order(schedule: "gpipe", stages: 2, stage: 0, microBatches: 3)
        #expect(names(o) == ["F0", "F1", "F2", "B2", "B1", "B0"])
    }

    @Test func oneFOneBWarmsUpThenAlternates() {
        // Stage 0 of 3 with 4 micro-batches: 2 warm-up forwards, then F2 B0 F3 B1, then B2 B3.
        let o = PipelineSchedule.order(schedule: "1f1b", stages: 3, stage: 0, microBatches: 4)
        #expect(names(o) == ["F0", "F1", "F2", "B0", "F3", "B1", "B2", "B3"])
        // The last stage alternates from the start.
        let last = PipelineSchedule.order(schedule: "1f1b", stages: 3, stage: 2, microBatches: 2)
        #expect(names(last) == ["F0", "B0", "F1", "B1"])
    }

    /// Megatron-LM's interleaved order: micro-batches in groups of `stages` through each piece.
    @Test func interleavedRunsGroupsThroughEveryPiece() {
        // 2 stages x 2 pieces, 4 micro-batches, stage 0: warm-up (2-0-1) x 2 + (2-1) x 2 = 4.
        let o = PipelineSchedule.order(schedule: "interleaved", stages: 2, stage: 0, microBatches: 4, virtualStages: 2)
        #expect(names(o) == ["F0", "F1", "F0c1", "F1c1", "F2", "B0c1", "F3", "B1c1", "F2c1", "B0", "F3c1", "B1",
                             "B2c1", "B3c1", "B2", "B3"])
    }

    /// Every schedule runs each (micro-batch, piece) forward once and backward once, and all
    /// stages together finish when each waits for its inputs in order (blocking receives,
    /// nonblocking sends): no deadlock, for several stage, piece and micro-batch counts.
    @Test(arguments: ["gpipe", "1f1b", "interleaved"])
    func everyScheduleCompletesWithoutDeadlock(schedule: String) {
        for p in [2, 3, 4] {
            for v in schedule == "interleaved" ? [2, 3] : [1] {
                for m in schedule == "interleaved" ? [p, 2 * p, 3 * p] : [1, 2, 5, 8] {
                    let orders = (0..<p).map { PipelineSchedule.order(schedule: schedule, stages: p, stage: $0, microBatches: m, virtualStages: v) }
                    for (s, o) in orders.enumerated() {
                        #expect(o.count == 2 * m * v, "\(schedule) p\(p) v\(v) m\(m) stage \(s)")
                        #expect(Set(o.map(\.description)).count == o.count)
                    }
                    // Virtual stage k = chunk p + stage; forward needs k - 1's forward, backward needs
                    // k + 1's backward and its own forward.
                    var doneF = Set<[Int]>(), doneB = Set<[Int]>(), next = [Int](repeating: 0, count: p)
                    var progressed = true
                    while progressed {
                        progressed = false
                        for s in 0..<p where next[s] < orders[s].count {
                            let op = orders[s][next[s]], k = op.chunk * p + s
                            let ready = op.forward ? (k == 0 || doneF.contains([k - 1, op.micro]))
                                : doneF.contains([k, op.micro]) && (k == p * v - 1 || doneB.contains([k + 1, op.micro]))
                            guard ready else { continue }
                            if op.forward { doneF.insert([k, op.micro]) } else { doneB.insert([k, op.micro]) }
                            next[s] += 1
                            progressed = true
                        }
                    }
                    #expect(next == orders.map(\.count), "\(schedule) p\(p) v\(v) m\(m) deadlocks at \(next)")
                }
            }
        }
    }
}

@Suite struct StageShardsTests {
    /// Every tensor is written by exactly one stage, the one holding it (a tied embedding by
    /// the first stage); the plan's memory estimate shrinks with more stages.
    @Test(arguments: [false, true])
    func everyTensorHasOneWriter(tied: Bool) throws {
        let config = LlamaConfig(hiddenSize: 16, intermediateSize: 24, numHiddenLayers: 4, numAttentionHeads: 4,
                                 numKeyValueHeads: 2, vocabSize: 64, tieWordEmbeddings: tied, maxPositionEmbeddings: 64)
        var memory: [Int] = []
        for stages in [1, 2, 4] {
            let plan = try ParallelPlan.make(model: config, world: stages, sequenceParallel: 1, pipelineParallel: stages,
                                             layout: "zigzag", seqLen: 32, globalSequences: 4, microBatches: 4,
                                             schedule: "1f1b", hosts: nil)
            let shards = StageShards(config: config, plan: plan)
            let written = (0..<stages).flatMap { shards.names(stage: $0) }
            #expect(written == LlamaTensors.layout(for: config).map(\.name), "stages \(stages)")
            for s in 0..<stages {
                for name in shards.names(stage: s) { #expect(shards.parts[s].holds(name, config: config), "\(name) on stage \(s)") }
                // The plan's parameter count per stage is what the stage's model holds.
                let held = try LlamaModel(config: config, part: shards.parts[s]).parameters.count
                #expect(held == plan.stages[s].parameters, "stage \(s) of \(stages)")
            }
            #expect(shards.weightMap["model.embed_tokens.weight"] == shards.modelFile(stage: 0))
            memory.append(plan.memoryPerRankBytes.max() ?? 0)
        }
        #expect(memory[0] > memory[1] && memory[1] > memory[2], "\(memory)")
    }
}

@Suite struct CheckpointLayoutTests {
    /// A directory missing a stage's file (a writer that saw another file system) is not
    /// completed, and a `latest` pointing at a missing checkpoint is an error, not a fresh start.
    @Test func missingFilesAreRefused() throws {
        let config = LlamaConfig(hiddenSize: 8, intermediateSize: 12, numHiddenLayers: 2, numAttentionHeads: 2,
                                 numKeyValueHeads: 2, vocabSize: 16, maxPositionEmbeddings: 16)
        let shards = StageShards(config: config, parts: [.stage(layers: 0..<1, of: config), .stage(layers: 1..<2, of: config)])
        let dir = NSTemporaryDirectory() + "torus-layout-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
        try FileManager.default.createDirectory(atPath: dir + "/checkpoints", withIntermediateDirectories: true)
        try Data().write(to: URL(fileURLWithPath: dir + "/" + shards.modelFile(stage: 0)))
        do {
            try shards.writeIndex(into: dir)
            Issue.record("an index was written without stage 1's shard")
        } catch {
            #expect("\(error)".contains("stage 1's file is missing"), "\(error)")
        }
        try "step-000004".write(toFile: dir + "/checkpoints/latest", atomically: true, encoding: .utf8)
        #expect(throws: TrainError.self) { try TrainingCheckpoint.latest(out: dir) }
        #expect(try TrainingCheckpoint.latest(out: dir + "/nothing-here") == nil)
    }
}

@Suite struct InterleavedPlanTests {
    static let config = LlamaConfig(hiddenSize: 16, intermediateSize: 24, numHiddenLayers: 8, numAttentionHeads: 4,
                                    numKeyValueHeads: 2, vocabSize: 64, maxPositionEmbeddings: 64)

    func plan(stages: Int, virtual: Int, micro: Int, schedule: String = "interleaved") throws -> ParallelPlan {
        try ParallelPlan.make(model: Self.config, world: stages, sequenceParallel: 1, pipelineParallel: stages, layout: "zigzag",
                              seqLen: 32, globalSequences: 2, microBatches: micro, schedule: schedule, virtualStages: virtual, hosts: nil)
    }

    /// Stage s holds pieces s, s + p, ...: with 2 stages x 2 pieces of 8 layers, stage 0 gets the
    /// first and third quarter; the bubble shrinks by the number of pieces.
    @Test func stagesHoldEveryPthPiece() throws {
        let p = try plan(stages: 2, virtual: 2, micro: 4)
        #expect(p.stages.map(\.chunks) == [[0..<2, 4..<6], [2..<4, 6..<8]])
        #expect(p.part(stage: 0, of: Self.config).embedding && !p.part(stage: 0, of: Self.config).head)
        #expect(p.part(stage: 1, of: Self.config).head)
        #expect(abs(p.bubbleFraction - 1.0 / 9.0) < 1e-12)
        #expect(abs(try plan(stages: 2, virtual: 1, micro: 4, schedule: "1f1b").bubbleFraction - 1.0 / 5.0) < 1e-12)
    }

    @Test func impossibleInterleavingIsRefused() {
        func reason(_ body: () throws -> ParallelPlan) -> String {
            do { _ = try body(); return "" } catch { return "\(error)" }
        }
        #expect(reason { try plan(stages: 2, virtual: 2, micro: 3) }.contains("a multiple of the 2 stages"))
        #expect(reason { try plan(stages: 4, virtual: 3, micro: 4) }.contains("12 pieces for 8 layers"))
        #expect(reason { try plan(stages: 2, virtual: 2, micro: 4, schedule: "1f1b") }.contains("needs schedule: interleaved"))
    }
}
