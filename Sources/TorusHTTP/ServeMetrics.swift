import Foundation
import Prometheus
import TorusServe

/// The engine's measurements as Prometheus series with vLLM's names (label `model_name`), so
/// dashboards made for vLLM work unchanged.
public final class ServeMetrics: EngineObserver, @unchecked Sendable {
    public let registry = PrometheusCollectorRegistry()
    let running, waiting, kvUsage: Gauge
    let promptTokens, generationTokens, preemptions, prefixQueries, prefixHits: Counter
    let success: [FinishReason: Counter]
    let ttft, itl, e2e, queue, promptLength, outputLength: ValueHistogram
    private let lock = NSLock()
    private var last = EngineStats()

    public init(modelName: String) {
        let l = [("model_name", modelName)]
        let r = registry
        running = r.makeGauge(name: "vllm:num_requests_running", labels: l, help: "Number of requests in model execution batches.")
        waiting = r.makeGauge(name: "vllm:num_requests_waiting", labels: l, help: "Number of requests waiting to be processed.")
        kvUsage = r.makeGauge(name: "vllm:kv_cache_usage_perc", labels: l, help: "KV-cache usage. 1 means 100 percent usage.")
        promptTokens = r.makeCounter(name: "vllm:prompt_tokens_total", labels: l, help: "Number of prefill tokens processed.")
        generationTokens = r.makeCounter(name: "vllm:generation_tokens_total", labels: l, help: "Number of generation tokens processed.")
        preemptions = r.makeCounter(name: "vllm:num_preemptions_total", labels: l, help: "Cumulative number of preemption from the engine.")
        prefixQueries = r.makeCounter(name: "vllm:prefix_cache_queries_total", labels: l,
                                      help: "Prefix cache queries, in terms of number of queried tokens.")
        prefixHits = r.makeCounter(name: "vllm:prefix_cache_hits_total", labels: l,
                                   help: "Prefix cache hits, in terms of number of cached tokens.")
        var success: [FinishReason: Counter] = [:]
        for reason in [FinishReason.stop, .length, .abort] {
            success[reason] = r.makeCounter(name: "vllm:request_success_total", labels: l + [("finished_reason", reason.rawValue)],
                                            help: "Count of successfully processed requests.")
        }
        self.success = success
        let latency: [Double] = [0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1, 2.5, 5, 7.5, 10, 20, 40, 80, 160, 640, 2560]
        ttft = r.makeValueHistogram(name: "vllm:time_to_first_token_seconds", labels: l, buckets: latency,
                                    help: "Histogram of time to first token in seconds.")
        itl = r.makeValueHistogram(name: "vllm:inter_token_latency_seconds", labels: l, buckets: latency,
                                   help: "Histogram of inter-token latency in seconds.")
        e2e = r.makeValueHistogram(name: "vllm:e2e_request_latency_seconds", labels: l, buckets: latency,
                                   help: "Histogram of e2e request latency in seconds.")
        queue = r.makeValueHistogram(name: "vllm:request_queue_time_seconds", labels: l, buckets: latency,
                                     help: "Histogram of time spent in WAITING phase for request.")
        let sizes: [Double] = [1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000, 20000, 50000, 100000, 200000]
        promptLength = r.makeValueHistogram(name: "vllm:request_prompt_tokens", labels: l, buckets: sizes,
                                            help: "Number of prefill tokens processed.")
        outputLength = r.makeValueHistogram(name: "vllm:request_generation_tokens", labels: l, buckets: sizes,
                                            help: "Number of generation tokens processed.")
    }

    public func engineDidStep(_ s: EngineStats) {
        lock.lock()
        let before = last
        last = s
        lock.unlock()
        running.set(Double(s.running))
        waiting.set(Double(s.waiting))
        kvUsage.set(s.kvUsage)
        func add(_ c: Counter, _ now: Int, _ then: Int) { if now > then { c.increment(by: Int64(now - then)) } }
        add(promptTokens, s.promptTokens, before.promptTokens)
        add(generationTokens, s.generationTokens, before.generationTokens)
        add(preemptions, s.preemptions, before.preemptions)
        add(prefixQueries, s.prefixQueries, before.prefixQueries)
        add(prefixHits, s.prefixHits, before.prefixHits)
    }

    public func requestDidFinish(_ reason: FinishReason, timings: GenerationTimings) {
        success[reason]?.increment()
        if let first = timings.firstToken { ttft.record(first) }
        e2e.record(timings.finished)
        queue.record(timings.queued)
        promptLength.record(Double(timings.promptTokens))
        outputLength.record(Double(timings.outputTokens))
    }

    public func interTokenLatency(_ seconds: Double) { itl.record(seconds) }

    /// The Prometheus text exposition.
    public func render() -> String { registry.emitToString() }
}
