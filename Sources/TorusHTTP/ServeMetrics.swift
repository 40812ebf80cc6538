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
    let chunkQueries, chunkHits, reusedTokens, recomputedTokens: Counter
    let storeBytes, storeEntries: [String: Gauge]
    let storeEvictions: [String: Counter]
    let storeBadFiles, storeFailedWrites: Counter
    let audits, auditAgreements: Counter
    let auditKL: ValueHistogram
    let disabledChunks: Gauge
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
        chunkQueries = r.makeCounter(name: "torus:chunk_queries_total", labels: l, help: "Document chunks looked up in the chunk store.")
        chunkHits = r.makeCounter(name: "torus:chunk_hits_total", labels: l, help: "Document chunks whose KV was found in the chunk store.")
        reusedTokens = r.makeCounter(name: "torus:chunk_reused_tokens_total", labels: l,
                                     help: "Prompt tokens whose KV came from the chunk store.")
        recomputedTokens = r.makeCounter(name: "torus:chunk_recomputed_tokens_total", labels: l,
                                         help: "Prompt tokens computed in chunk-reuse prefills (uncached plus selected for recompute).")
        var bytes: [String: Gauge] = [:], entries: [String: Gauge] = [:], evictions: [String: Counter] = [:]
        for tier in ["memory", "disk"] {
            bytes[tier] = r.makeGauge(name: "torus:chunk_store_bytes", labels: l + [("tier", tier)], help: "Bytes held by the chunk store.")
            entries[tier] = r.makeGauge(name: "torus:chunk_store_entries", labels: l + [("tier", tier)], help: "Chunk variants held.")
            evictions[tier] = r.makeCounter(name: "torus:chunk_store_evictions_total", labels: l + [("tier", tier)],
                                            help: "Chunk variants evicted to stay within the tier's budget.")
        }
        storeBytes = bytes
        storeEntries = entries
        storeEvictions = evictions
        storeBadFiles = r.makeCounter(name: "torus:chunk_store_bad_files_total", labels: l,
                                      help: "Chunk files found corrupt, truncated or of another model (served as misses).")
        audits = r.makeCounter(name: "torus:reuse_audits_total", labels: l,
                               help: "Chunk-reuse requests also run with full prefill to measure the divergence.")
        auditAgreements = r.makeCounter(name: "torus:reuse_audit_top1_agreements_total", labels: l,
                                        help: "Audited requests whose first token is the same with reuse and with full prefill.")
        auditKL = r.makeValueHistogram(name: "torus:reuse_audit_kl", labels: l, buckets: [0.0001, 0.001, 0.01, 0.03, 0.1, 0.3, 1, 3, 10],
                                       help: "KL(full prefill || reuse) of the first generated token's distribution in audited requests, nats.")
        disabledChunks = r.makeGauge(name: "torus:reuse_disabled_chunks", labels: l,
                                     help: "Chunks an audit found too far from full prefill: computed in full from then on.")
        storeFailedWrites = r.makeCounter(name: "torus:chunk_store_failed_writes_total", labels: l,
                                          help: "Chunk files that could not be written (kept in memory only).")
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
        add(chunkQueries, s.chunkQueries, before.chunkQueries)
        add(chunkHits, s.chunkHits, before.chunkHits)
        add(reusedTokens, s.reusedTokens, before.reusedTokens)
        add(recomputedTokens, s.recomputedTokens, before.recomputedTokens)
        disabledChunks.set(Double(s.disabledChunks))
        if let store = s.chunkStore {
            let old = before.chunkStore ?? ChunkStoreStats()
            storeBytes["memory"]?.set(Double(store.memoryBytes))
            storeBytes["disk"]?.set(Double(store.diskBytes))
            storeEntries["memory"]?.set(Double(store.memoryEntries))
            storeEntries["disk"]?.set(Double(store.diskEntries))
            if let c = storeEvictions["memory"] { add(c, store.memoryEvictions, old.memoryEvictions) }
            if let c = storeEvictions["disk"] { add(c, store.diskEvictions, old.diskEvictions) }
            add(storeBadFiles, store.badFiles, old.badFiles)
            add(storeFailedWrites, store.failedWrites, old.failedWrites)
        }
    }

    public func requestDidFinish(_ reason: FinishReason, timings: GenerationTimings) {
        success[reason]?.increment()
        if let first = timings.firstToken { ttft.record(first) }
        e2e.record(timings.finished)
        queue.record(timings.queued)
        promptLength.record(Double(timings.promptTokens))
        outputLength.record(Double(timings.outputTokens))
        if let audit = timings.reuse?.audit {
            audits.increment()
            if audit.top1Agrees { auditAgreements.increment() }
            auditKL.record(audit.kl)
        }
    }

    public func interTokenLatency(_ seconds: Double) { itl.record(seconds) }

    /// The Prometheus text exposition.
    public func render() -> String { registry.emitToString() }
}
