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
    @Test func gpipeRunsAllForwardsFirst() {
        let o = Trainer.pipelineOrder(schedule: "gpipe", stages: 2, stage: 0, microBatches: 3)
        #expect(o.map(\.forward) == [true, true, true, false, false, false])
        #expect(o.map(\.micro) == [0, 1, 2, 2, 1, 0])
    }

    @Test func oneFOneBWarmsUpThenAlternates() {
        // Stage 0 of 3 with 4 micro-batches: 2 warm-up forwards, then F2 B0 F3 B1, then B2 B3.
        let o = Trainer.pipelineOrder(schedule: "1f1b", stages: 3, stage: 0, microBatches: 4)
        #expect(o.map { "\($0.forward ? "F" : "B")\($0.micro)" } == ["F0", "F1", "F2", "B0", "F3", "B1", "B2", "B3"])
        // The last stage alternates from the start.
        let last = Trainer.pipelineOrder(schedule: "1f1b", stages: 3, stage: 2, microBatches: 2)
        #expect(last.map { "\($0.forward ? "F" : "B")\($0.micro)" } == ["F0", "B0", "F1", "B1"])
        // Every micro-batch runs forward once and backward once, forward first.
        for stage in 0..<4 {
            let x = Trainer.pipelineOrder(schedule: "1f1b", stages: 4, stage: stage, microBatches: 6)
            for m in 0..<6 {
                let f = x.firstIndex { $0.forward && $0.micro == m }, b = x.firstIndex { !$0.forward && $0.micro == m }
                #expect(f != nil && b != nil && f! < b!)
            }
            #expect(x.count == 12)
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
