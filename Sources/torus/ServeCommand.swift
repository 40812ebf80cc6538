import ArgumentParser
import Foundation
import TorusHTTP
import TorusModel
import TorusComm
import TorusParallel
import TorusServe

struct ServeCommand: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "serve",
        abstract: "Serve a model over an OpenAI-compatible HTTP API (completions, chat, streaming, /metrics).")

    @Option(help: "YAML config with a serve: section (flags override it).") var config: String?
    @Option(help: "Hugging Face model directory (serve.model).") var model: String?
    @Option(help: "Name clients pass as 'model' (default: the directory's name).") var servedModelName: String?
    @Option(help: "Address to bind (default 127.0.0.1).") var host: String?
    @Option(help: "Port (0 picks a free one; default 8000).") var port: Int?
    @Option(help: "Require 'Authorization: Bearer KEY' on /v1/* (also TORUS_API_KEY).") var apiKey: String?
    @Option(help: "Positions per KV block.") var blockSize: Int?
    @Flag(inversion: .prefixedNo, help: "Reuse full prompt blocks across requests (serve.enable_prefix_caching; vLLM's flag).")
    var enablePrefixCaching: Bool?
    @Flag(inversion: .prefixedNo, help: "Back the whole KV pool with memory from the start (serve.kv_cache_resident; default on).")
    var kvCacheResident: Bool?
    @Option(help: "Memory for the KV cache, MiB.") var kvCacheMemoryMb: Int?
    @Option(help: "Longest prompt + output (default: max_position_embeddings).") var maxModelLen: Int?
    @Option(help: "Rows per model step (prefill chunk budget).") var maxNumBatchedTokens: Int?
    @Option(help: "Sequences running at once.") var maxNumSeqs: Int?
    @Option(help: "Requests queued before 429.") var maxWaiting: Int?
    @Option(help: "Chat template: chatml or llama3 (default: detected from tokenizer_config.json).") var chatTemplate: String?
    @Option(help: "Dense layers in float32 or bfloat16 (serve.dtype; vLLM's --dtype).") var dtype: String?
    @Option(help: "KV cache elements in float32 or bfloat16 (serve.kv_cache_dtype; vLLM's --kv-cache-dtype).") var kvCacheDtype: String?
    @Option(help: "Largest request body, MiB.") var maxBodyMb: Int?
    @Option(help: "Under mpirun: prefill long prompts across the ranks with ring or tokenring.") var sequenceParallel: String?
    @Option(help: "Layout of a prompt over the ranks: zigzag or contiguous.") var spLayout: String?
    @Option(help: "Prompts of at least this many tokens are prefilled across the ranks.") var spThreshold: Int?
    @Option(help: "Reuse the KV of request documents: full, unchanged, cacheblend, gradual, faithful, epic or cachecraft, or epic+ another (its first tokens of every chunk too) (serve.chunk_reuse.policy).")
    var chunkReuse: String?
    @Option(help: "Share of cached tokens recomputed by cacheblend, gradual and faithful (serve.chunk_reuse.ratio).") var reuseRatio: Double?
    @Option(help: "Cache-Craft: scale of each chunk's recomputed share, alpha x CCI x (1 - beta') (serve.chunk_reuse.alpha).")
    var reuseAlpha: Double?
    @Option(help: "Directory of the chunk store's disk tier (serve.chunk_reuse.directory).") var chunkStore: String?
    @Option(help: "Share of reuse requests also run with full prefill to measure the divergence (serve.chunk_reuse.audit_share).")
    var auditShare: Double?
    @Option(help: "KL past which an audited request's reused chunks are computed in full (serve.chunk_reuse.audit_max_kl).")
    var auditMaxKl: Double?
    @Option(help: "Split completion prompts into chunks at this string (serve.chunk_reuse.separator).") var chunkSeparator: String?

    func run() throws {
        BLASCoreCheck.warnOnce()
        var s = try config.map { try ServeSection.load(path: $0) } ?? ServeSection()
        if let model { s.model = model }
        if let servedModelName { s.servedModelName = servedModelName }
        if let host { s.host = host }
        if let port { s.port = port }
        if let blockSize { s.blockSize = blockSize }
        if let enablePrefixCaching { s.enablePrefixCaching = enablePrefixCaching }
        if let kvCacheResident { s.kvCacheResident = kvCacheResident }
        if let kvCacheMemoryMb { s.kvCacheMemoryMB = kvCacheMemoryMb }
        if let maxModelLen { s.maxModelLen = maxModelLen }
        if let maxNumBatchedTokens { s.maxNumBatchedTokens = maxNumBatchedTokens }
        if let maxNumSeqs { s.maxNumSeqs = maxNumSeqs }
        if let maxWaiting { s.maxWaiting = maxWaiting }
        if let chatTemplate { s.chatTemplate = chatTemplate }
        if let maxBodyMb { s.maxBodyMB = maxBodyMb }
        if let dtype { s.dtype = try InferencePrecision(option: dtype) }
        if let kvCacheDtype { s.kvCacheDtype = try InferencePrecision(option: kvCacheDtype, flag: "--kv-cache-dtype") }
        if let sequenceParallel { s.spMethod = sequenceParallel }
        if let spLayout { s.spLayout = spLayout }
        if let spThreshold { s.spThreshold = spThreshold }
        if let chunkReuse {
            var policy = s.reuse ?? ReusePolicy()
            guard policy.select(chunkReuse) else {
                throw ValidationError("--chunk-reuse \(chunkReuse): known policies are \(ReusePolicy.names.joined(separator: ", "))")
            }
            s.reuse = policy
        }
        if let reuseRatio {
            guard (0...1).contains(reuseRatio) else { throw ValidationError("--reuse-ratio \(reuseRatio): expected 0...1") }
            s.reuse = s.reuse ?? ReusePolicy()
            s.reuse?.ratio = reuseRatio
        }
        if let reuseAlpha {
            guard reuseAlpha >= 0 else { throw ValidationError("--reuse-alpha \(reuseAlpha): expected 0 or more") }
            s.reuse = s.reuse ?? ReusePolicy()
            s.reuse?.alpha = reuseAlpha
        }
        if let problem = s.reuse?.misplacedKnob(ratio: reuseRatio.map { _ in "--reuse-ratio" }, alpha: reuseAlpha.map { _ in "--reuse-alpha" },
                                                 alphaName: "--reuse-alpha") {
            throw ValidationError(problem)
        }
        if let chunkStore {
            s.reuse = s.reuse ?? ReusePolicy()
            s.reuseDirectory = chunkStore
        }
        if let chunkSeparator {
            guard !chunkSeparator.isEmpty else { throw ValidationError("--chunk-separator is empty") }
            s.reuse = s.reuse ?? ReusePolicy()
            s.chunkSeparator = chunkSeparator
        }
        if let auditShare {
            guard (0...1).contains(auditShare) else { throw ValidationError("--audit-share \(auditShare): expected 0...1") }
            s.audit.share = auditShare
        }
        if let auditMaxKl {
            guard auditMaxKl >= 0 else { throw ValidationError("--audit-max-kl \(auditMaxKl): expected a KL of 0 or more") }
            s.audit.maxKL = auditMaxKl
        }
        guard let dir = s.model else { throw ValidationError("give the model directory: --model DIR or serve.model in --config") }
        let env = ProcessInfo.processInfo.environment
        let key = apiKey ?? s.apiKeyEnv.flatMap { env[$0] } ?? env["TORUS_API_KEY"]
        if let name = s.apiKeyEnv, env[name] == nil {
            throw ValidationErrorMessage("serve.api_key_env names \(name), which is not set in the environment")
        }
        let template: ChatTemplate?
        if let t = s.chatTemplate {
            guard let named = ChatTemplate(rawValue: t) else {
                throw ValidationError("--chat-template \(t): known templates are \(ChatTemplate.allCases.map(\.rawValue).joined(separator: ", "))")
            }
            template = named
        } else {
            template = ModelTokenizer.chatTemplate(directory: dir).flatMap(ChatTemplate.detect(jinja:))
        }

        let loaded = try HFCheckpoint.load(directory: dir)
        loaded.setInferencePrecision(s.dtype)
        let tokenizer = try ModelTokenizer.load(directory: dir, vocabularySize: loaded.config.vocabSize)
        // Under mpirun every rank runs the steps; rank 0 also runs HTTP and the scheduler.
        let group: ServeGroup
        if MPIRuntime.launchedByMPIRun {
            let world = try MPIRuntime.world()
            let method = try SequenceParallelMethod(name: s.spMethod)
            guard let layout = SequenceLayoutKind(rawValue: s.spLayout) else { throw SequenceParallelError.unknownLayout(s.spLayout) }
            group = world.size > 1 ? MPIServeGroup(comm: world, method: method, layout: layout) : SingleRankGroup()
            if world.rank > 0 {
                warn("serve: rank \(world.rank) of \(world.size) runs the steps rank 0 plans (pid \(getpid()))")
                (group as? MPIServeGroup)?.startHeartbeat()
                do {
                    try Engine.serveWorker(model: loaded, config: s.engineConfig, group: group)
                } catch {
                    warn("torus serve: rank \(world.rank) of \(world.size): \(error)")
                    world.abort(code: 1)
                }
                (group as? MPIServeGroup)?.stopBackgroundThreads()
                return
            }
        } else {
            group = SingleRankGroup()
        }
        let engine: Engine
        do {
            let reuse = try s.reuse.map { policy -> ChunkReuse in
                let store = try ChunkStore(fingerprint: ChunkReuse.fingerprint(loaded), memoryBudget: s.reuseMemoryMB << 20,
                                           directory: s.reuseDirectory, diskBudget: s.reuseDiskMB << 20) { warn("serve: \($0)") }
                return ChunkReuse(store: store, policy: policy, tokenizer: Self.tokenizerIdentity(directory: dir), audit: s.audit) {
                    warn("serve: \($0)")
                }
            }
            engine = try Engine(model: loaded, config: s.engineConfig, eosTokenID: tokenizer.eosTokenID, group: group,
                                prefillThreshold: s.spThreshold, reuse: reuse)
        } catch {
            // The other ranks wait for plans: end the job rather than leave them waiting.
            if let mpi = group as? MPIServeGroup { warn("torus serve: rank 0: \(error)"); mpi.comm.abort(code: 1) }
            throw error
        }
        if let mpi = group as? MPIServeGroup {
            // A rank that stops beating: /health turns 503, then the job ends naming the rank.
            mpi.watchHeartbeats { rank in
                let why = "rank \(rank) of \(mpi.size) stopped responding (no heartbeat for \(MPIServeGroup.heartbeatTimeout) s)"
                engine.fail(why)
                warn("serve: \(why); /health reports 503; ending the job in 3 s")
                Thread.sleep(forTimeInterval: 3)
                warn("serve: ending the job: \(why)")
                mpi.comm.abort(code: 1)
            }
        }
        let name = s.servedModelName ?? URL(fileURLWithPath: dir).standardizedFileURL.lastPathComponent
        let served = ServedModel(engine: engine, tokenizer: tokenizer, name: name, root: dir, chatTemplate: template,
                                 chunkSeparator: s.reuse == nil ? nil : s.chunkSeparator)
        let options = HTTPOptions(host: s.host, port: s.port, apiKey: key, maxBodyBytes: s.maxBodyMB << 20,
                                  shutdownGraceSeconds: s.shutdownGraceS)
        let server = HTTPServer(model: served, options: options)
        let kvMiB = (engine.blockCount * PagedKVCache.bytesPerBlock(config: loaded.config, blockSize: s.blockSize,
                                                                          precision: s.kvCacheDtype)) >> 20
        let ranks = group.size > 1 ? ", \(group.size) ranks (prompts of \(s.spThreshold)+ tokens prefilled with \(s.spMethod), \(s.spLayout))" : ""
        let summary = "model \(name) from \(dir), \(engine.blockCount) KV blocks of \(s.blockSize) (\(kvMiB) MiB, \(s.kvCacheDtype.rawValue))\(group.size > 1 ? " per rank" : ""), "
            + "max_model_len \(engine.maxModelLength), chat template \(template?.rawValue ?? "none")"
            + (key == nil ? "" : ", API key required") + ranks
            + (s.reuse.map { ", chunk reuse \($0.summary)" + (s.reuseDirectory.map { " (store \($0))" } ?? "") } ?? "")
        let host = s.host
        let outcome = ServeOutcome()
        let done = DispatchSemaphore(value: 0)
        Task {
            do {
                try await server.run { port in
                    warn("serve: listening on http://\(host):\(port) (pid \(getpid()), \(summary))")
                }
            } catch {
                outcome.set(error)
            }
            done.signal()
        }
        done.wait()
        (group as? MPIServeGroup)?.stopBackgroundThreads()
        engine.shutdown()
        if let error = outcome.error { throw ValidationErrorMessage("serve: \(error)") }
        warn("serve: stopped")
    }
}

extension ServeCommand {
    /// What identifies the tokenizer in chunk keys: the SHA-256 of tokenizer.json, or "byte".
    static func tokenizerIdentity(directory: String) -> String {
        guard let data = FileManager.default.contents(atPath: directory + "/tokenizer.json") else { return "byte" }
        return "tokenizer.json:" + SHA256.hash(data).hex
    }
}

/// The server task's error, handed back to the command's thread.
final class ServeOutcome: @unchecked Sendable {
    private let lock = NSLock()
    private var stored: Error?
    func set(_ e: Error) { lock.lock(); stored = e; lock.unlock() }
    var error: Error? { lock.lock(); defer { lock.unlock() }; return stored }
}
