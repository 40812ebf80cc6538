import Foundation
import TorusHTTP
import TorusModel
import TorusServe
import Yams

/// The `serve:` section of a YAML config (every key optional; CLI flags override):
///
///     serve:
///       model: runs/m                 # Hugging Face model directory
///       served_model_name: torus-tiny # the `model` clients pass (default: the directory's name)
///       host: 127.0.0.1
///       port: 8000
///       api_key_env: TORUS_API_KEY    # environment variable holding the API key
///       block_size: 16                # positions per KV block
///       kv_cache_memory_mb: 1024      # memory for KV blocks
///       kv_cache_resident: true       # back the whole pool with memory from the start (false: as blocks are first written)
///       enable_prefix_caching: true   # reuse full prompt blocks across requests (vLLM's flag)
///       max_model_len: 4096           # longest prompt + output
///       max_num_batched_tokens: 2048  # rows per step (chunked prefill budget)
///       max_num_seqs: 64              # running sequences
///       max_waiting: 1024             # queued requests before 429
///       chat_template: chatml         # chatml | llama3 (else detected from tokenizer_config.json)
///       dtype: float32                # float32 | bfloat16 (dense layers' weights and inputs rounded to bfloat16)
///       kv_cache_dtype: float32       # float32 | bfloat16 (keys and values stored in bfloat16: half the bytes)
///       max_body_mb: 64
///       shutdown_grace_s: 10
///       sequence_parallel:            # under mpirun: long prompts prefilled across the ranks
///         method: ring                # ring | tokenring
///         layout: zigzag              # zigzag | contiguous
///         threshold: 4096             # prompts of at least this many tokens
///       chunk_reuse:                  # reuse the KV of documents sent in `documents`
///         policy: cacheblend          # full | unchanged | cacheblend | faithful | epic | cachecraft
///         ratio: 0.15                 # share of cached tokens recomputed (cacheblend, faithful)
///         check_layer: 1
///         first_tokens: 16            # epic: tokens recomputed at the start of every chunk
///         alpha: 1.0                  # cachecraft: scale of the recompute fraction
///         memory_mb: 512              # memory tier
///         directory: runs/chunks      # disk tier (optional)
///         disk_mb: 4096
///         audit_share: 0.05           # share of reuse requests also run with full prefill
///         audit_max_kl: 0.1           # past this KL a request's reused chunks are computed in full
///         separator: "<|chunk|>"      # also split completion prompts into chunks at this string
struct ServeSection {
    var model: String?
    var servedModelName: String?
    var host = "127.0.0.1"
    var port = 8000
    var apiKeyEnv: String?
    var blockSize = 16
    var kvCacheMemoryMB = 1024
    var enablePrefixCaching = true
    var kvCacheResident = true
    var maxModelLen: Int?
    var maxNumBatchedTokens = 2048
    var maxNumSeqs = 64
    var maxWaiting = 1024
    var chatTemplate: String?
    var dtype = InferencePrecision.float32
    var kvCacheDtype = InferencePrecision.float32
    var maxBodyMB = 64
    var shutdownGraceS = 10.0
    var spMethod = "ring"
    var spLayout = "zigzag"
    var spThreshold = 4096
    /// Chunk reuse (nil: off).
    var reuse: ReusePolicy?
    var reuseMemoryMB = 512
    var reuseDirectory: String?
    var reuseDiskMB = 4096
    var audit = ReuseAudit()
    var chunkSeparator: String?

    static let keys = ["model", "served_model_name", "host", "port", "api_key_env", "block_size", "kv_cache_memory_mb",
                       "max_model_len", "max_num_batched_tokens", "max_num_seqs", "max_waiting", "chat_template",
                       "dtype", "kv_cache_dtype", "enable_prefix_caching", "kv_cache_resident", "max_body_mb", "shutdown_grace_s", "sequence_parallel", "chunk_reuse"]

    /// The `serve:` section of `path` (defaults when the file has none).
    static func load(path: String) throws -> ServeSection {
        guard let text = try? String(contentsOfFile: path, encoding: .utf8) else {
            throw ConfigError(file: path, message: "cannot read the file")
        }
        let root: Any?
        do { root = try Yams.load(yaml: text) } catch { throw ConfigError(file: path, message: "not valid YAML: \(error)") }
        guard let map = root as? [String: Any] else { throw ConfigError(file: path, message: "the top level must be a mapping") }
        var s = ServeSection()
        guard let section = map["serve"] else { return s }
        guard let m = section as? [String: Any] else { throw ConfigError(file: path, message: "'serve' must be a mapping") }
        try RunConfig.checkKeys(m, known: keys, section: "serve", file: path)
        let r = RunConfig.Reader(file: path)
        if m["model"] != nil { s.model = try r.string(m, "model", section: "serve") }
        if m["served_model_name"] != nil { s.servedModelName = try r.string(m, "served_model_name", section: "serve") }
        if m["host"] != nil { s.host = try r.string(m, "host", section: "serve") }
        if m["port"] != nil { s.port = try r.int(m, "port", section: "serve", min: 0) }
        if m["api_key_env"] != nil { s.apiKeyEnv = try r.string(m, "api_key_env", section: "serve") }
        if m["block_size"] != nil { s.blockSize = try r.int(m, "block_size", section: "serve", min: 1) }
        if m["kv_cache_memory_mb"] != nil { s.kvCacheMemoryMB = try r.int(m, "kv_cache_memory_mb", section: "serve", min: 1) }
        if m["enable_prefix_caching"] != nil { s.enablePrefixCaching = try r.bool(m, "enable_prefix_caching", section: "serve") }
        if m["kv_cache_resident"] != nil { s.kvCacheResident = try r.bool(m, "kv_cache_resident", section: "serve") }
        if m["max_model_len"] != nil { s.maxModelLen = try r.int(m, "max_model_len", section: "serve", min: 1) }
        if m["max_num_batched_tokens"] != nil { s.maxNumBatchedTokens = try r.int(m, "max_num_batched_tokens", section: "serve", min: 1) }
        if m["max_num_seqs"] != nil { s.maxNumSeqs = try r.int(m, "max_num_seqs", section: "serve", min: 1) }
        if m["max_waiting"] != nil { s.maxWaiting = try r.int(m, "max_waiting", section: "serve", min: 0) }
        if m["chat_template"] != nil { s.chatTemplate = try r.string(m, "chat_template", section: "serve") }
        func precision(_ key: String) throws -> InferencePrecision? {
            guard m[key] != nil else { return nil }
            let name = try r.string(m, key, section: "serve")
            guard let precision = InferencePrecision(name: name) else {
                throw ConfigError(file: path, message: "'serve.\(key)' is '\(name)'; known: "
                    + InferencePrecision.allCases.map(\.rawValue).joined(separator: ", "))
            }
            return precision
        }
        if let dtype = try precision("dtype") { s.dtype = dtype }
        if let dtype = try precision("kv_cache_dtype") { s.kvCacheDtype = dtype }
        if m["max_body_mb"] != nil { s.maxBodyMB = try r.int(m, "max_body_mb", section: "serve", min: 1) }
        if m["shutdown_grace_s"] != nil { s.shutdownGraceS = try r.double(m, "shutdown_grace_s", section: "serve") }
        if let sp = m["sequence_parallel"] {
            guard let sp = sp as? [String: Any] else { throw ConfigError(file: path, message: "'serve.sequence_parallel' must be a mapping") }
            try RunConfig.checkKeys(sp, known: ["method", "layout", "threshold"], section: "serve.sequence_parallel", file: path)
            if sp["method"] != nil { s.spMethod = try r.string(sp, "method", section: "serve.sequence_parallel") }
            if sp["layout"] != nil { s.spLayout = try r.string(sp, "layout", section: "serve.sequence_parallel") }
            if sp["threshold"] != nil { s.spThreshold = try r.int(sp, "threshold", section: "serve.sequence_parallel", min: 2) }
            guard ["ring", "tokenring"].contains(s.spMethod) else {
                throw ConfigError(file: path, message: "'serve.sequence_parallel.method' is '\(s.spMethod)'; known: ring, tokenring")
            }
            guard ["zigzag", "contiguous"].contains(s.spLayout) else {
                throw ConfigError(file: path, message: "'serve.sequence_parallel.layout' is '\(s.spLayout)'; known: zigzag, contiguous")
            }
        }
        if let cr = m["chunk_reuse"] {
            let sec = "serve.chunk_reuse"
            guard let cr = cr as? [String: Any] else { throw ConfigError(file: path, message: "'\(sec)' must be a mapping") }
            try RunConfig.checkKeys(cr, known: ["policy", "ratio", "check_layer", "first_tokens", "alpha", "memory_mb", "directory", "disk_mb",
                                                  "audit_share", "audit_max_kl", "separator"],
                                    section: sec, file: path)
            var p = ReusePolicy()
            if cr["policy"] != nil {
                let name = try r.string(cr, "policy", section: sec)
                guard p.select(name) else {
                    throw ConfigError(file: path, message: "'\(sec).policy' is '\(name)'; known: " + ReusePolicy.names.joined(separator: ", "))
                }
            }
            if cr["ratio"] != nil {
                p.ratio = try r.double(cr, "ratio", section: sec)
                guard (0...1).contains(p.ratio) else { throw ConfigError(file: path, message: "'\(sec).ratio' is \(p.ratio); expected 0...1") }
            }
            if cr["check_layer"] != nil { p.checkLayer = try r.int(cr, "check_layer", section: sec, min: 0) }
            if cr["first_tokens"] != nil { p.firstTokens = try r.int(cr, "first_tokens", section: sec, min: 0) }
            if cr["alpha"] != nil {
                p.alpha = try r.double(cr, "alpha", section: sec)
                guard p.alpha >= 0 else { throw ConfigError(file: path, message: "'\(sec).alpha' is \(p.alpha); expected >= 0") }
            }
            if let problem = p.misplacedKnob(ratio: cr["ratio"] == nil ? nil : "'\(sec).ratio'", alpha: cr["alpha"] == nil ? nil : "'\(sec).alpha'",
                                             alphaName: "'\(sec).alpha'") {
                throw ConfigError(file: path, message: problem)
            }
            if cr["memory_mb"] != nil { s.reuseMemoryMB = try r.int(cr, "memory_mb", section: sec, min: 0) }
            if cr["directory"] != nil { s.reuseDirectory = try r.string(cr, "directory", section: sec) }
            if cr["disk_mb"] != nil { s.reuseDiskMB = try r.int(cr, "disk_mb", section: sec, min: 0) }
            if cr["audit_share"] != nil {
                s.audit.share = try r.double(cr, "audit_share", section: sec)
                guard (0...1).contains(s.audit.share) else {
                    throw ConfigError(file: path, message: "'\(sec).audit_share' is \(s.audit.share); expected 0...1")
                }
            }
            if cr["audit_max_kl"] != nil { s.audit.maxKL = try r.double(cr, "audit_max_kl", section: sec) }
            if cr["separator"] != nil {
                s.chunkSeparator = try r.string(cr, "separator", section: sec)
                guard s.chunkSeparator?.isEmpty == false else { throw ConfigError(file: path, message: "'\(sec).separator' is empty") }
            }
            s.reuse = p
        }
        if let t = s.chatTemplate, ChatTemplate(rawValue: t) == nil {
            throw ConfigError(file: path, message: "'serve.chat_template' is '\(t)'; known: \(ChatTemplate.allCases.map(\.rawValue).joined(separator: ", "))")
        }
        return s
    }

    var engineConfig: EngineConfig {
        EngineConfig(blockSize: blockSize, kvCacheBytes: kvCacheMemoryMB << 20, maxModelLength: maxModelLen,
                     limits: SchedulerLimits(maxBatchedTokens: maxNumBatchedTokens, maxRunning: maxNumSeqs, maxWaiting: maxWaiting),
                     kvCachePrecision: kvCacheDtype, enablePrefixCaching: enablePrefixCaching, residentKVCache: kvCacheResident)
    }
}
