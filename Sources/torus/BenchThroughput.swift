import ArgumentParser
import Foundation
import TorusModel
import TorusServe
import TorusTensor

/// `torus bench throughput`: the serving engine without HTTP, as `vllm bench throughput`
/// measures vLLM's (random prompts submitted in-process, outputs of fixed length with EOS
/// ignored). What HTTP, streaming and the client cost is the difference from `bench serve`.
struct BenchThroughput: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "throughput",
        abstract: "The serving engine in-process (no HTTP): requests/s, total and output tokens/s, step times.")

    @Option(help: "Hugging Face model directory.") var model: String
    @Option(help: "Dense layers in float32 or bfloat16 (as torus serve --dtype).") var dtype: String = "float32"
    @Option(help: "KV cache in float32 or bfloat16 (as torus serve --kv-cache-dtype).") var kvCacheDtype: String = "float32"
    @OptionGroup var requestSet: RequestSetOptions
    @Option(help: "Requests in the engine at most (a new one is submitted as one finishes); default: all at once.") var maxConcurrency: Int?
    @Option(help: "Rows per model step (as torus serve).") var maxNumBatchedTokens: Int = 2048
    @Option(help: "Running sequences at most (as torus serve).") var maxNumSeqs: Int = 64
    @Option(help: "KV cache memory, MiB.") var kvCacheMemoryMb: Int = 2048
    @Option(help: "Longest prompt + output (default: max_position_embeddings).") var maxModelLen: Int?
    @Flag(inversion: .prefixedNo, help: "Back the whole KV pool with memory before the runs (as torus serve by default).")
    var kvCacheResident = true
    @Option(help: "Seed of the request set.") var seed: UInt64 = 0
    @Option(help: "Timed runs of the same request set (after one warm-up run).") var repeats: Int = 3

    func validate() throws {
        if repeats < 1 { throw ValidationError("--repeats must be positive") }
        if let n = maxModelLen, n < 1 { throw ValidationError("--max-model-len must be positive") }
        if let c = maxConcurrency, c < 1 { throw ValidationError("--max-concurrency must be positive") }
    }

    func run() throws {
        BLASCoreCheck.warnOnce()
        let m = try HFCheckpoint.load(directory: model)
        m.setInferencePrecision(try InferencePrecision(option: dtype))
        let limits = SchedulerLimits(maxBatchedTokens: maxNumBatchedTokens, maxRunning: maxNumSeqs, maxWaiting: requestSet.numPrompts)
        let engine = try Engine(model: m, config: EngineConfig(kvCacheBytes: kvCacheMemoryMb << 20,
                                                               maxModelLength: maxModelLen ?? m.config.maxPositionEmbeddings, limits: limits,
                                                               kvCachePrecision: try InferencePrecision(option: kvCacheDtype),
                                                               enablePrefixCaching: false, residentKVCache: kvCacheResident))
        defer { engine.shutdown() }
        // bench serve's request set for the same seed and lengths when its --vocab is the model's vocabulary (and no --ascii).
        var rng = SeededGenerator(seed: seed)
        let vocab = UInt64(m.config.vocabSize), numPrompts = requestSet.numPrompts
        let requests = requestSet.draw(&rng) { Int($0 % vocab) }.map { ids, output in
            GenerationRequest(prompt: ids.map(Int32.init), maxTokens: output, ignoreEOS: true)
        }
        let inputTokens = requests.reduce(0) { $0 + $1.prompt.count }, outputTokens = requests.reduce(0) { $0 + ($1.maxTokens ?? 0) }
        print("machine: \(BLASEnvironment.availableCores) cores, OpenBLAS core \(BLAS.coreName), OPENBLAS_CORETYPE="
              + (ProcessInfo.processInfo.environment["OPENBLAS_CORETYPE"] ?? "(unset)"))
        print("bench throughput: \(numPrompts) requests, \(requestSet.summary), "
              + "\(inputTokens) prompt and \(outputTokens) output tokens, max concurrency \(maxConcurrency.map(String.init) ?? "none"), "
              + "\(dtype) weights, \(kvCacheDtype) KV, max_num_batched_tokens \(maxNumBatchedTokens), seed \(seed)")
        var rates: [Double] = []
        for run in 0...repeats {
            let (seconds, failures) = try measure(engine, requests)
            guard failures.isEmpty else { throw ValidationError("bench throughput: \(failures.count) requests failed, the first: \(failures[0])") }
            let steps = engine.currentStats.steps
            let label = run == 0 ? "warm-up" : "run \(run)"
            print(String(format: "%@: %.2f s, %.2f requests/s, %.1f total tokens/s, %.1f output tokens/s (%d steps so far)", label, seconds,
                         Double(numPrompts) / seconds, Double(inputTokens + outputTokens) / seconds, Double(outputTokens) / seconds, steps))
            if run > 0 { rates.append(Double(outputTokens) / seconds) }
        }
        let sorted = rates.sorted(), mid = sorted.count / 2
        let median = sorted.count % 2 == 1 ? sorted[mid] : (sorted[mid - 1] + sorted[mid]) / 2
        print(String(format: "Throughput: output tokens/s median %.1f (min %.1f, max %.1f over %d runs)", median,
                     sorted[0], sorted[sorted.count - 1], sorted.count))
    }

    /// Runs the request set once (at most `maxConcurrency` in the engine); seconds and failures.
    private func measure(_ engine: Engine, _ requests: [GenerationRequest]) throws -> (Double, [String]) {
        let slots = DispatchSemaphore(value: maxConcurrency ?? requests.count)
        let group = DispatchGroup()
        let failures = FailureList()
        let start = DispatchTime.now().uptimeNanoseconds
        for r in requests {
            slots.wait()
            group.enter()
            _ = try engine.submit(r) { event in
                switch event {
                case .token: break
                case let .failed(message): failures.append(message); slots.signal(); group.leave()
                case .finished: slots.signal(); group.leave()
                }
            }
        }
        group.wait()
        return (Double(DispatchTime.now().uptimeNanoseconds - start) / 1e9, failures.all)
    }
}

/// Failure messages written by the engine thread.
final class FailureList: @unchecked Sendable {
    private let lock = NSLock()
    private var messages: [String] = []
    func append(_ m: String) { lock.lock(); messages.append(m); lock.unlock() }
    var all: [String] { lock.lock(); defer { lock.unlock() }; return messages }
}
