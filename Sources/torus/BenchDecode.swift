import ArgumentParser
import Foundation
import TorusModel
import TorusServe
import TorusTensor

/// `torus bench decode`: batch-1 decoding against its physical limit. Every decode step reads
/// every weight once, so tokens/s cannot exceed memory bandwidth / weight bytes; this measures
/// the bandwidth (read and copy loops), the model's bytes, and the engine's tokens/s.
struct BenchDecode: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "decode",
        abstract: "Batch-1 decode tokens/s against memory bandwidth / weight bytes.")

    @Option(help: "Hugging Face model directory.") var model: String
    @Option(help: "Tokens to decode.") var tokens: Int = 256
    @Option(help: "Prompt tokens before decoding.") var promptTokens: Int = 16
    @Option(help: "Buffer for the bandwidth loops, MiB.") var bufferMb: Int = 1024
    @Option(help: "Dense layers in float32 or bfloat16 (as torus serve --dtype).") var dtype: String = "float32"

    func run() throws {
        BLASCoreCheck.warnOnce()
        let m = try HFCheckpoint.load(directory: model)
        let precision = try InferencePrecision(option: dtype)
        m.setInferencePrecision(precision)
        // Bytes one decode step reads: the dense layers' weights in the chosen precision, the rest fp32.
        let weightBytes = m.config.parameterCount * 4 - m.inferenceWeightBytesSaved
        print("machine: \(BLASEnvironment.availableCores) cores, OpenBLAS core \(BLAS.coreName), \(BLAS.threads) BLAS threads, "
              + "OPENBLAS_CORETYPE=\(ProcessInfo.processInfo.environment["OPENBLAS_CORETYPE"] ?? "(unset)")")
        let (read1, readAll, copy1) = bandwidth(bytes: bufferMb << 20)
        print(String(format: "memory bandwidth: read %.1f GB/s (1 thread), %.1f GB/s (%d threads); copy %.1f GB/s (1 thread, read + write bytes)",
                     read1 / 1e9, readAll / 1e9, BLASEnvironment.availableCores, copy1 / 1e9))
        print(String(format: "model: %d parameters, %.1f MB of weights read per token (%@ dense layers)", m.config.parameterCount,
                     Double(weightBytes) / 1e6, precision.rawValue))
        let best = max(read1, readAll)
        print(String(format: "limit: %.0f tokens/s (best read bandwidth / weight bytes)", best / Double(weightBytes)))

        var g = SeededGenerator(seed: 1)
        let prompt = (0..<promptTokens).map { _ in Int32(g.next() % UInt64(m.config.vocabSize)) }
        // torus generate's path: one sequence, contiguous KV cache.
        let t0 = Date()
        var first: Date?
        _ = try m.generate(prompt: prompt, maxNewTokens: tokens) { _ in if first == nil { first = Date() } }
        let generateRate = Double(tokens - 1) / Date().timeIntervalSince(first ?? t0)
        // The serving engine's path: batched step over paged KV, one request.
        let engine = try Engine(model: m, config: EngineConfig(kvCacheBytes: 256 << 20, maxModelLength: min(m.config.maxPositionEmbeddings, 4096),
                                                               limits: .init(maxBatchedTokens: 512, maxRunning: 8, maxWaiting: 8)))
        defer { engine.shutdown() }
        let times = TokenTimes()
        let done = DispatchSemaphore(value: 0)
        try engine.submit(GenerationRequest(prompt: prompt, maxTokens: tokens, ignoreEOS: true)) { e in
            switch e {
            case .token: times.stamp()
            case .finished, .failed: done.signal()
            }
        }
        done.wait()
        let engineRate = times.rate
        for (name, rate) in [("torus generate (KV cache)", generateRate), ("serving engine (paged KV)", engineRate)] {
            print(String(format: "decode %@: %.1f tokens/s = %.1f%% of the bandwidth limit (%.1f GB/s of weights read)",
                         name, rate, 100 * rate * Double(weightBytes) / best, rate * Double(weightBytes) / 1e9))
        }
    }

    /// Read bandwidth with one thread and with every core, and copy bandwidth with one thread.
    func bandwidth(bytes: Int) -> (Double, Double, Double) {
        let count = bytes / 4
        let a = UnsafeMutablePointer<Float>.allocate(capacity: count), b = UnsafeMutablePointer<Float>.allocate(capacity: count)
        defer { a.deallocate(); b.deallocate() }
        a.initialize(repeating: 1, count: count)
        b.initialize(repeating: 0, count: count)
        func best(_ body: () -> Void) -> Double {
            var t = Double.infinity
            for _ in 0..<3 {
                let s = DispatchTime.now().uptimeNanoseconds
                body()
                t = min(t, Double(DispatchTime.now().uptimeNanoseconds - s) / 1e9)
            }
            return t
        }
        let cores = BLASEnvironment.availableCores
        var sink: Float = 0
        let read1 = Double(bytes) / best { sink += VectorMath.max(a, count: count) }
        let parts = SumParts(count: cores)
        let readAll = Double(bytes) / best {
            let per = count / cores
            DispatchQueue.concurrentPerform(iterations: cores) { i in
                parts.set(i, VectorMath.max(a + i * per, count: per))
            }
        }
        let copy1 = Double(2 * bytes) / best { b.update(from: a, count: count) }
        if sink == 42 { print("") }
        return (read1, readAll, copy1)
    }
}

/// Per-thread partial sums (kept so the reads are not optimised away).
final class SumParts: @unchecked Sendable {
    private var values: [Float]
    private let lock = NSLock()
    init(count: Int) { values = Array(repeating: 0, count: count) }
    func set(_ i: Int, _ v: Float) { lock.lock(); values[i] = v; lock.unlock() }
}

/// Times of the tokens of one request.
final class TokenTimes: @unchecked Sendable {
    private let lock = NSLock()
    private var times: [Date] = []
    func stamp() { lock.lock(); times.append(Date()); lock.unlock() }
    /// Tokens per second after the first token.
    var rate: Double {
        lock.lock(); defer { lock.unlock() }
        guard let a = times.first, let b = times.last, times.count > 1 else { return 0 }
        return Double(times.count - 1) / b.timeIntervalSince(a)
    }
}
