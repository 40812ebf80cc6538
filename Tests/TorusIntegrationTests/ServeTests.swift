import Foundation
import Testing
import TorusModel

/// `torus serve` driven over real sockets: the official `openai` client, httpx and Prometheus'
/// parser (Tests/serve/openai_client_test.py), and the CLI's refusals.
@Suite(.serialized) struct ServeTests {
    static func modelDirectory(layers: Int = 2) throws -> String {
        let dir = NSTemporaryDirectory() + "torus-serve-model-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        // Larger initial weights than transformers' default: peaked logits, so greedy choices are
        // rarely near-ties.
        try """
        model:
          hidden_size: 64
          intermediate_size: 96
          num_hidden_layers: \(layers)
          num_attention_heads: 4
          num_key_value_heads: 2
          vocab_size: 256
          max_position_embeddings: 512
          initializer_range: 0.15
        seed: 5
        """.write(toFile: dir + "/model.yaml", atomically: true, encoding: .utf8)
        let r = try TorusBinary.torus(["init", "--config", dir + "/model.yaml", "--out", dir + "/m"])
        guard r.status == 0 else { throw ServerStartError(log: r.output) }
        return dir + "/m"
    }

    @Test(.enabled(if: ClientPython.executable != nil, Comment(rawValue: ClientPython.skipMessage)))
    func openAIClientAgainstTheServer() throws {
        let model = try Self.modelDirectory()
        let python = try #require(ClientPython.executable)
        let server = try ServerProcess(TorusBinary.path, ["serve", "--model", model, "--port", "0", "--served-model-name", "tiny",
                                                          "--api-key", "sk-test", "--chat-template", "chatml", "--max-body-mb", "1",
                                                          "--max-model-len", "512", "--kv-cache-memory-mb", "64",
                                                          "--chunk-reuse", "cacheblend", "--chunk-store", model + "-chunks",
                                                          "--chunk-separator", "<|chunk|>"],
                                       environment: ["TORUS_NO_REEXEC": "1"])
        let busy = try ServerProcess(TorusBinary.path, ["serve", "--model", model, "--port", "0", "--max-waiting", "0"],
                                     environment: ["TORUS_NO_REEXEC": "1"])
        defer { busy.stop(); server.stop() }
        let r = try TorusBinary.run(python, [ClientPython.repository + "/Tests/serve/openai_client_test.py", "--base", server.base,
                                             "--key", "sk-test", "--torus", TorusBinary.path, "--model-dir", model, "--name", "tiny",
                                             "--max-len", "512", "--pid", String(server.pid), "--busy-base", busy.base], timeout: 300)
        #expect(r.status == 0, "\(r.output)\n--- server log ---\n\(server.log)")
        #expect(r.stdout.contains(" passed, 0 failed"), "\(r.stdout)")
        // The script ends with SIGTERM: the server stopped by itself.
        #expect(server.waitForExit(timeout: 15) != nil, "\(server.log)")
        #expect(server.log.contains("serve: stopped"), "\(server.log)")
    }

    /// `mpirun -np 2|3 torus serve`: long prompts prefilled across the ranks (Ring Attention with
    /// zigzag chunks on 2, TokenRing with contiguous chunks on 3), short ones on one rank each,
    /// decode merging every rank's partials: the same tokens as one rank, prefix caching, chunk
    /// reuse (blended on rank 0: a full recompute gives the tokens of a plain prefill across the
    /// ranks), freed blocks after a disconnect, and SIGTERM ending every rank.
    @Test(.enabled(if: ClientPython.executable != nil, Comment(rawValue: ClientPython.skipMessage)),
          arguments: [(2, "ring", "zigzag"), (3, "tokenring", "contiguous")])
    func severalRanksGiveTheTokensOfOne(ranks: Int, method: String, layout: String) throws {
        let model = try Self.modelDirectory()
        let python = try #require(ClientPython.executable)
        let mpirun = ["/usr/bin/mpirun", "/usr/local/bin/mpirun"].first { FileManager.default.isExecutableFile(atPath: $0) } ?? "mpirun"
        let server = try ServerProcess(mpirun, TorusBinary.rootFlags + ["--oversubscribe", "-np", String(ranks), TorusBinary.path, "serve",
                                                                         "--model", model, "--port", "0", "--served-model-name", "tiny",
                                                                         "--kv-cache-memory-mb", "32", "--sequence-parallel", method,
                                                                         "--sp-layout", layout, "--sp-threshold", "120",
                                                                         "--chunk-reuse", "cacheblend", "--chunk-store", model + "-chunks"],
                                       environment: ["TORUS_NO_REEXEC": "1"])
        defer { server.stop() }
        #expect(server.log.contains("\(ranks) ranks"), "\(server.log)")
        let rank0 = try #require(server.log.split(separator: "\n").first { $0.contains("listening on") }
            .flatMap { $0.components(separatedBy: "(pid ").last?.prefix(while: \.isNumber) }.flatMap { Int32($0) })
        let r = try TorusBinary.run(python, [ClientPython.repository + "/Tests/serve/openai_client_test.py", "--base", server.base,
                                             "--key", "none", "--torus", TorusBinary.path, "--model-dir", model, "--name", "tiny",
                                             "--max-len", "512", "--pid", String(rank0),
                                             "--checks", "greedy completion,16 concurrent,long prompts,prefix cache,documents:,disconnects,SIGTERM"],
                                    timeout: 300)
        #expect(r.status == 0 && r.stdout.contains(" passed, 0 failed"), "\(r.output)\n--- server log ---\n\(server.log)")
        // SIGTERM to rank 0 stops the other ranks too: mpirun ends by itself.
        #expect(server.waitForExit(timeout: 20) == 0, "\(server.log)")
    }

    /// Exactness test 5 of chunk reuse through the server: a request whose documents were
    /// stored by an earlier one, blended (CacheBlend) across 2 ranks, gives the tokens and
    /// logprobs of the same request blended on one rank from the same chunk store; the blend
    /// across ranks is audited against full prefill (with a bound no audit passes, so that no
    /// audit disables the chunks the later requests reuse).
    @Test func blendAcrossRanksGivesTheTokensOfOneRank() throws {
        // 4 layers: CacheBlend checks at layer 1 and keeps the stored KV of most rows in layers 2, 3.
        let model = try Self.modelDirectory(layers: 4), store = model + "-chunks"
        var g = SystemRandomNumberGenerator()
        let docs = (0..<3).map { i in "Doc: " + String((0..<(40 + 9 * i)).map { _ in Character(UnicodeScalar(UInt8.random(in: 97...122, using: &g))) }) + "\n" }
        let question = "Q: which one?\nA:"
        func completion(_ base: String, _ documents: [String], policy: String) throws -> [String: Any] {
            let body: [String: Any] = ["model": "tiny", "prompt": question, "documents": documents, "reuse_policy": policy, "max_tokens": 8,
                                       "temperature": 0, "ignore_eos": true, "logprobs": 1]
            let json = String(decoding: try JSONSerialization.data(withJSONObject: body), as: UTF8.self)
            let r = try TorusBinary.run("/usr/bin/curl", ["-s", "-m", "60", "-H", "Content-Type: application/json", "-d", json,
                                                          base + "/v1/completions"], timeout: 70)
            return try #require(try JSONSerialization.jsonObject(with: Data(r.stdout.utf8)) as? [String: Any], "\(r.output)")
        }
        func logprobs(_ j: [String: Any]) -> (tokens: [String], values: [Double]) {
            let l = ((j["choices"] as? [[String: Any]])?.first?["logprobs"] as? [String: Any]) ?? [:]
            return ((l["tokens"] as? [String]) ?? [], (l["token_logprobs"] as? [Double]) ?? [])
        }
        let reordered = [docs[2], docs[0], docs[1]]
        let mpirun = ["/usr/bin/mpirun", "/usr/local/bin/mpirun"].first { FileManager.default.isExecutableFile(atPath: $0) } ?? "mpirun"
        let across = try ServerProcess(mpirun, TorusBinary.rootFlags + ["--oversubscribe", "-np", "2", TorusBinary.path, "serve", "--model", model,
                                                                         "--port", "0", "--served-model-name", "tiny", "--kv-cache-memory-mb", "16",
                                                                         "--sp-threshold", "120", "--chunk-reuse", "cacheblend",
                                                                         "--chunk-store", store, "--audit-share", "1",
                                                                         "--audit-max-kl", "1e9"],
                                       environment: ["TORUS_NO_REEXEC": "1", "TORUS_LOG_STEPS": "1"])
        let first = try completion(across.base, docs, policy: "full")
        #expect((first["usage"] as? [String: Any])?["prompt_tokens"] as? Int ?? 0 >= 120, "\(first)")
        let split = try completion(across.base, reordered, policy: "cacheblend")
        let splitUnchanged = try completion(across.base, reordered, policy: "unchanged")
        let metrics = try TorusBinary.run("/usr/bin/curl", ["-s", "-m", "10", across.base + "/metrics"], timeout: 20).stdout
        across.stop()
        let reuse = ((split["usage"] as? [String: Any])?["reuse"] as? [String: Any]) ?? [:]
        #expect(reuse["chunk_hits"] as? Int == 3, "\(split)")
        #expect(across.log.contains("blend across 2 ranks") && across.log.contains("audit of a blend across ranks"), "\(across.log)")
        let audits = metrics.split(separator: "\n").first { $0.hasPrefix("torus:reuse_audits_total") }
            .flatMap { $0.split(separator: " ").last }.flatMap { Double($0) }
        #expect((audits ?? 0) >= 1, "\(metrics)")

        let one = try ServerProcess(TorusBinary.path, ["serve", "--model", model, "--port", "0", "--served-model-name", "tiny",
                                                       "--kv-cache-memory-mb", "16", "--chunk-reuse", "cacheblend", "--chunk-store", store],
                                    environment: ["TORUS_NO_REEXEC": "1"])
        defer { one.stop() }
        let alone = try completion(one.base, reordered, policy: "cacheblend")
        let aloneUnchanged = try completion(one.base, reordered, policy: "unchanged")
        #expect(((alone["usage"] as? [String: Any])?["reuse"] as? [String: Any])?["chunk_hits"] as? Int == 3, "\(alone)")
        for (x, y) in [(split, alone), (splitUnchanged, aloneUnchanged)] {
            let (a, b) = (logprobs(x), logprobs(y))
            #expect(a.tokens.count == 8 && a.tokens == b.tokens, "across 2 ranks \(a.tokens), one rank \(b.tokens)")
            #expect(a.values.count == 8 && zip(a.values, b.values).allSatisfy { abs($0 - $1) < 1e-3 },
                    "across 2 ranks \(a.values), one rank \(b.values)")
        }
    }

    /// A killed rank: rank 0's watchdog misses its heartbeat, /health turns 503, and the job ends
    /// with a message naming the rank (mpirun with --enable-recovery, as `torus launch --serve`
    /// runs it, so that the death does not take rank 0 down first).
    @Test func aKilledRankTurnsHealthTo503AndEndsTheJobNamingIt() throws {
        let model = try Self.modelDirectory()
        let mpirun = ["/usr/bin/mpirun", "/usr/local/bin/mpirun"].first { FileManager.default.isExecutableFile(atPath: $0) } ?? "mpirun"
        let server = try ServerProcess(mpirun, TorusBinary.rootFlags + ["--enable-recovery", "--oversubscribe", "-np", "2", TorusBinary.path,
                                                                         "serve", "--model", model, "--port", "0", "--kv-cache-memory-mb", "16"],
                                       environment: ["TORUS_NO_REEXEC": "1"])
        defer { server.stop() }
        let worker = try #require(server.log.split(separator: "\n").first { $0.contains("rank 1 of 2") }
            .flatMap { $0.components(separatedBy: "(pid ").last?.prefix(while: \.isNumber) }.flatMap { Int32($0) })
        #expect(try Self.healthStatus(server.base) == 200)
        kill(worker, SIGKILL)
        var seen: [Int] = []
        let deadline = Date().addingTimeInterval(10)
        while Date() < deadline, seen.last != 503 {
            seen.append((try? Self.healthStatus(server.base)) ?? 0)
            Thread.sleep(forTimeInterval: 0.1)
        }
        #expect(seen.last == 503, "health answers after the kill: \(seen)\n\(server.log)")
        #expect(server.waitForExit(timeout: 20) != nil, "\(server.log)")
        #expect(server.log.contains("rank 1 of 2 stopped responding"), "\(server.log)")
    }

    /// The HTTP status of GET /health (throws when nothing answers).
    static func healthStatus(_ base: String) throws -> Int {
        let r = try TorusBinary.run("/usr/bin/curl", ["-s", "-o", "/dev/null", "-w", "%{http_code}", "-m", "2", base + "/health"], timeout: 10)
        return Int(r.stdout) ?? 0
    }

    /// `torus bench serve` against a live server counts every request and writes vLLM's
    /// per-request fields; `torus bench throughput` runs the same kind of request set through the
    /// engine in-process and counts its tokens.
    @Test func benchServeAndBenchThroughputCountTheirRequests() throws {
        let model = try Self.modelDirectory()
        let server = try ServerProcess(TorusBinary.path, ["serve", "--model", model, "--port", "0", "--served-model-name", "tiny",
                                                          "--kv-cache-memory-mb", "32"])
        defer { server.stop() }
        let json = NSTemporaryDirectory() + "torus-bench-serve-\(getpid()).json"
        let r = try TorusBinary.torus(["bench", "serve", "--base", server.base, "--model", "tiny", "--num-prompts", "6", "--input-len", "20",
                                       "--output-len", "8", "--range-ratio", "0.5", "--max-concurrency", "2", "--seed", "1",
                                       "--json-out", json], timeout: 120)
        #expect(r.status == 0 && r.stdout.contains("Successful requests:                    6\n"), "\(r.output)")
        let data = try Data(contentsOf: URL(fileURLWithPath: json))
        let obj = try #require(try JSONSerialization.jsonObject(with: data) as? [String: Any])
        let ttfts = obj["ttfts"] as? [Double] ?? [], inputs = obj["input_lens"] as? [Int] ?? [], outputs = obj["output_lens"] as? [Int] ?? []
        #expect(ttfts.count == 6 && ttfts.allSatisfy { $0 > 0 }, "\(obj)")
        #expect(inputs.count == 6 && inputs.allSatisfy { (10...30).contains($0) }, "\(obj)")
        #expect(outputs.count == 6 && outputs.allSatisfy { (4...12).contains($0) }, "\(obj)")
        #expect(obj["total_output_tokens"] as? Int == outputs.reduce(0, +) && obj["completed"] as? Int == 6, "\(obj)")
        #expect((obj["errors"] as? [String])?.allSatisfy(\.isEmpty) == true, "\(obj)")

        let t = try TorusBinary.torus(["bench", "throughput", "--model", model, "--num-prompts", "5", "--input-len", "20", "--output-len", "8",
                                       "--max-concurrency", "2", "--max-num-batched-tokens", "16", "--repeats", "1",
                                       "--kv-cache-memory-mb", "32"], timeout: 120)
        #expect(t.status == 0 && t.stdout.contains("5 requests, input 20 / output 8 tokens") && t.stdout.contains("100 prompt and 40 output tokens"),
                "\(t.output)")
        #expect(t.stdout.contains("run 1: ") && t.stdout.contains("Throughput: output tokens/s median"), "\(t.output)")
    }

    @Test func launchServePrintsThePlanAndTheCommand() throws {
        let dir = NSTemporaryDirectory() + "torus-launch-serve-\(getpid())"
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        try "serve:\n  model: runs/m\n  port: 8123\n  sequence_parallel: {method: tokenring, layout: contiguous, threshold: 2048}\n"
            .write(toFile: dir + "/serve.yaml", atomically: true, encoding: .utf8)
        let r = try TorusBinary.torus(["launch", "--serve", "--config", dir + "/serve.yaml", "--np", "4", "--dry-run"])
        #expect(r.status == 0, "\(r.output)")
        #expect(r.stdout.contains("prompts of 2048+ tokens are prefilled across all ranks with tokenring (contiguous)"), "\(r.stdout)")
        #expect(r.stdout.contains("--enable-recovery") && r.stdout.contains("serve --config"), "\(r.stdout)")
        try "serve:\n  model: runs/m\n  sequence_parallel: {method: ulysses}\n".write(toFile: dir + "/bad.yaml", atomically: true, encoding: .utf8)
        let bad = try TorusBinary.torus(["launch", "--serve", "--config", dir + "/bad.yaml", "--np", "2", "--dry-run"])
        #expect(bad.status != 0 && bad.stderr.contains("serve.sequence_parallel.method"), "\(bad.output)")
    }

    @Test func serveRefusesBadSettingsWithTheReason() throws {
        let model = try Self.modelDirectory()
        let long = try TorusBinary.torus(["serve", "--model", model, "--max-model-len", "100000", "--port", "0"], timeout: 60)
        #expect(long.status != 0 && long.stderr.contains("max_position_embeddings"), "\(long.output)")
        let template = try TorusBinary.torus(["serve", "--model", model, "--chat-template", "jinja2", "--port", "0"], timeout: 60)
        #expect(template.status != 0 && template.stderr.contains("chatml"), "\(template.output)")
        let dtype = try TorusBinary.torus(["serve", "--model", model, "--dtype", "fp8", "--port", "0"], timeout: 60)
        #expect(dtype.status != 0 && dtype.stderr.contains("--dtype fp8: expected float32 or bfloat16"), "\(dtype.output)")
        try "serve:\n  dtype: half\n".write(toFile: model + "/dtype.yaml", atomically: true, encoding: .utf8)
        let dtypeKey = try TorusBinary.torus(["serve", "--config", model + "/dtype.yaml", "--model", model, "--port", "0"], timeout: 60)
        #expect(dtypeKey.status != 0 && dtypeKey.stderr.contains("'serve.dtype' is 'half'; known: float32, bfloat16"), "\(dtypeKey.output)")
        let kvFlag = try TorusBinary.torus(["serve", "--model", model, "--kv-cache-dtype", "fp8", "--port", "0"], timeout: 60)
        #expect(kvFlag.status != 0 && kvFlag.stderr.contains("--kv-cache-dtype fp8: expected float32 or bfloat16"), "\(kvFlag.output)")
        try "serve:\n  kv_cache_dtype: int8\n".write(toFile: model + "/kv.yaml", atomically: true, encoding: .utf8)
        let kvKey = try TorusBinary.torus(["serve", "--config", model + "/kv.yaml", "--model", model, "--port", "0"], timeout: 60)
        #expect(kvKey.status != 0 && kvKey.stderr.contains("'serve.kv_cache_dtype' is 'int8'; known: float32, bfloat16"), "\(kvKey.output)")
        let ratio = try TorusBinary.torus(["serve", "--model", model, "--chunk-reuse", "cachecraft", "--reuse-ratio", "0.1", "--port", "0"], timeout: 60)
        #expect(ratio.status != 0 && ratio.stderr.contains("--reuse-ratio does not apply to cachecraft"), "\(ratio.output)")
        let alpha = try TorusBinary.torus(["serve", "--model", model, "--chunk-reuse", "cacheblend", "--reuse-alpha", "0.5", "--port", "0"], timeout: 60)
        #expect(alpha.status != 0 && alpha.stderr.contains("--reuse-alpha applies to cachecraft only, not cacheblend"), "\(alpha.output)")
        try "serve:\n  chunk_reuse: {policy: cachecraft, ratio: 0.2}\n".write(toFile: model + "/craft.yaml", atomically: true, encoding: .utf8)
        let craft = try TorusBinary.torus(["serve", "--config", model + "/craft.yaml", "--model", model, "--port", "0"], timeout: 60)
        #expect(craft.status != 0 && craft.stderr.contains("'serve.chunk_reuse.ratio' does not apply to cachecraft"), "\(craft.output)")
        try "serve:\n  enable_prefix_caching: 0\n".write(toFile: model + "/prefix.yaml", atomically: true, encoding: .utf8)
        let prefix = try TorusBinary.torus(["serve", "--config", model + "/prefix.yaml", "--model", model, "--port", "0"], timeout: 60)
        #expect(prefix.status != 0 && prefix.stderr.contains("'serve.enable_prefix_caching' must be true or false"), "\(prefix.output)")
        let missing = try TorusBinary.torus(["serve", "--model", model + "-nope", "--port", "0"], timeout: 60)
        #expect(missing.status != 0 && missing.stderr.contains("config.json"), "\(missing.output)")
        try "{\"model\": {\"type\": \"WordPiece\"".write(toFile: model + "/tokenizer.json", atomically: true, encoding: .utf8)
        let broken = try TorusBinary.torus(["serve", "--model", model, "--port", "0"], timeout: 60)
        #expect(broken.status != 0 && broken.stderr.contains("tokenizer.json") && broken.stderr.contains("not valid JSON"), "\(broken.output)")
        try "{\"model\": {\"type\": \"WordPiece\", \"vocab\": {}}}".write(toFile: model + "/tokenizer.json", atomically: true, encoding: .utf8)
        let wordPiece = try TorusBinary.torus(["serve", "--model", model, "--port", "0"], timeout: 60)
        #expect(wordPiece.status != 0 && wordPiece.stderr.contains("WordPiece"), "\(wordPiece.output)")
    }
}
