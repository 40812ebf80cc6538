import ArgumentParser
import Foundation
import TorusTensor

/// `torus bench serve`: a load generator for any OpenAI-compatible `/v1/completions`, measured
/// the way `vllm bench serve` measures (streamed requests with usage; TTFT = first chunk with
/// choices, ITL = gaps between later chunks, TPOT = (latency - TTFT) / (tokens - 1)).
struct BenchServe: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "serve",
        abstract: "Load an OpenAI-compatible server: request and token throughput, TTFT, TPOT, ITL, end-to-end latency.")

    @Option(help: "Server, e.g. http://127.0.0.1:8000.") var base: String
    @Option(help: "Model name to send.") var model: String
    @Option(help: "API key (Authorization: Bearer).") var apiKey: String?
    @OptionGroup var requestSet: RequestSetOptions
    @Option(help: "Vocabulary to draw random prompt token ids from.") var vocab: Int = 256
    @Flag(help: "Draw prompt tokens from printable ASCII (32-126), so that prompts are text any byte tokenizer round-trips.") var ascii = false
    @Option(help: "Requests from a JSONL file of {\"prompt\": text, \"output_tokens\": N} (vllm bench serve's custom dataset; an optional \"documents\" list is sent as Torus's documents field) instead of random ones.") var dataset: String?
    @Option(help: "Write the request set as such a JSONL file (needs --ascii), for vllm bench serve --dataset-name custom.") var saveDataset: String?
    @Option(help: "Requests per second (Poisson arrivals); inf sends all at once.") var requestRate: String = "inf"
    @Option(help: "Requests in flight at most.") var maxConcurrency: Int?
    @Option(help: "Seed of the request set and the arrivals.") var seed: UInt64 = 0
    @Option(help: "Write the per-request figures and the summary as JSON here.") var jsonOut: String?
    @Option(help: "A label printed with the results.") var label: String?

    func validate() throws {
        if requestRate != "inf", Double(requestRate).map({ $0 <= 0 }) ?? true { throw ValidationError("--request-rate must be positive or inf") }
        if let c = maxConcurrency, c < 1 { throw ValidationError("--max-concurrency must be positive") }
        if saveDataset != nil && !ascii { throw ValidationError("--save-dataset needs --ascii (text prompts)") }
    }

    struct Outcome {
        var ok = false
        var error = ""
        var promptTokens = 0
        var outputTokens = 0
        var ttft = 0.0
        var latency = 0.0
        var itl: [Double] = []
    }

    func run() throws {
        let client = try StreamingHTTPClient(base: base, apiKey: apiKey)
        var rng = SeededGenerator(seed: seed)
        let numPrompts = requestSet.numPrompts
        var requests: [Request] = requestSet.draw(&rng) { ascii ? 32 + Int($0 % 95) : Int($0 % UInt64(vocab)) }.map { ids, output in
            Request(prompt: ascii ? .text(String(decoding: ids.map(UInt8.init), as: UTF8.self)) : .ids(ids), output: output)
        }
        if let dataset { requests = try Self.load(dataset: dataset, limit: numPrompts) }
        if let saveDataset {
            let lines = requests.compactMap { r -> String? in
                guard case let .text(t) = r.prompt,
                      let d = try? JSONSerialization.data(withJSONObject: ["prompt": t, "output_tokens": r.output], options: [.sortedKeys]) else { return nil }
                return String(decoding: d, as: UTF8.self)
            }
            try (lines.joined(separator: "\n") + "\n").write(toFile: saveDataset, atomically: true, encoding: .utf8)
        }
        var arrivals: [Double] = []
        var t = 0.0
        let rate = Double(requestRate)
        for _ in requests {
            arrivals.append(t)
            if let rate { t += -log(max(1e-12, rng.nextUniform())) / rate }
        }
        print("bench serve: \(requests.count) requests to \(base) (model \(model)), "
              + (dataset.map { "from \($0)" } ?? requestSet.summary) + ", rate \(requestRate), max concurrency \(maxConcurrency.map(String.init) ?? "none"), seed \(seed)")
        let total = requests.count
        let results = Results(count: total)
        let slots = DispatchSemaphore(value: maxConcurrency ?? requests.count)
        let group = DispatchGroup()
        let start = Date()
        for (i, r) in requests.enumerated() {
            let wait = arrivals[i] - Date().timeIntervalSince(start)
            if wait > 0 { Thread.sleep(forTimeInterval: wait) }
            slots.wait()
            group.enter()
            let thread = Thread {
                let o = Self.send(client: client, model: model, prompt: r.prompt, maxTokens: r.output, documents: r.documents)
                let done = results.store(o, at: i)
                if done % max(1, total / 10) == 0 {
                    FileHandle.standardError.write(Data(String(format: "bench serve: %d/%d done (%.1f s)\n", done, total,
                                                               Date().timeIntervalSince(start)).utf8))
                }
                slots.signal()
                group.leave()
            }
            thread.stackSize = 1 << 20
            thread.start()
        }
        group.wait()
        let duration = Date().timeIntervalSince(start)
        report(results.all, duration: duration)
    }

    struct Request {
        var prompt: Prompt
        var output: Int
        var documents: [String]? = nil
    }

    /// A prompt as token ids or as text.
    enum Prompt {
        case ids([Int])
        case text(String)
        var json: Any { switch self { case let .ids(i): return i; case let .text(t): return t } }
    }

    /// Requests of a JSONL file with "prompt" (text) and "output_tokens".
    static func load(dataset path: String, limit: Int) throws -> [Request] {
        guard let text = try? String(contentsOfFile: path, encoding: .utf8) else {
            throw ValidationErrorMessage("--dataset \(path) does not exist or cannot be read")
        }
        var out: [Request] = []
        for (i, line) in text.split(separator: "\n").enumerated() where !line.trimmingCharacters(in: .whitespaces).isEmpty {
            guard let obj = (try? JSONSerialization.jsonObject(with: Data(line.utf8))) as? [String: Any],
                  let prompt = obj["prompt"] as? String else {
                throw ValidationErrorMessage("--dataset \(path) line \(i + 1): expected {\"prompt\": text, \"output_tokens\": N}")
            }
            let documents = obj["documents"] as? [String]
            if obj["documents"] != nil && documents == nil {
                throw ValidationErrorMessage("--dataset \(path) line \(i + 1): \"documents\" must be a list of strings")
            }
            out.append(Request(prompt: .text(prompt), output: obj["output_tokens"] as? Int ?? 128, documents: documents))
            if out.count == limit { break }
        }
        return out
    }

    static func send(client: StreamingHTTPClient, model: String, prompt: Prompt, maxTokens: Int, documents: [String]? = nil) -> Outcome {
        var o = Outcome()
        var body: [String: Any] = ["model": model, "prompt": prompt.json, "max_tokens": maxTokens, "temperature": 0, "stream": true,
                                   "ignore_eos": true, "stream_options": ["include_usage": true]]
        if let documents { body["documents"] = documents }
        guard let data = try? JSONSerialization.data(withJSONObject: body) else { o.error = "cannot encode"; return o }
        let st = Date()
        var last = st, first = true
        do {
            let (status, text) = try client.post(path: "/v1/completions", body: data) { event in
                guard event != "[DONE]", let obj = (try? JSONSerialization.jsonObject(with: Data(event.utf8))) as? [String: Any] else { return }
                let now = Date()
                if let choices = obj["choices"] as? [Any], !choices.isEmpty {
                    if first { o.ttft = now.timeIntervalSince(st); first = false } else { o.itl.append(now.timeIntervalSince(last)) }
                    last = now
                } else if let usage = obj["usage"] as? [String: Any] {
                    o.outputTokens = usage["completion_tokens"] as? Int ?? 0
                    o.promptTokens = usage["prompt_tokens"] as? Int ?? 0
                }
            }
            o.latency = Date().timeIntervalSince(st)
            if status == 200 && !first { o.ok = true } else { o.error = "HTTP \(status): \(text.prefix(200))" }
        } catch {
            o.error = "\(error)"
        }
        return o
    }

    func report(_ outcomes: [Outcome], duration: Double) {
        let ok = outcomes.filter(\.ok)
        let failed = outcomes.count - ok.count
        let input = ok.map(\.promptTokens).reduce(0, +), output = ok.map(\.outputTokens).reduce(0, +)
        let ttft = ok.map { $0.ttft * 1000 }, e2e = ok.map { $0.latency * 1000 }
        let tpot = ok.filter { $0.outputTokens > 1 }.map { ($0.latency - $0.ttft) / Double($0.outputTokens - 1) * 1000 }
        let itl = ok.flatMap { $0.itl.map { $0 * 1000 } }
        func line(_ name: String, _ value: String) { print(name.padding(toLength: 40, withPad: " ", startingAt: 0) + value) }
        print("============ Serving Benchmark Result ============" + (label.map { " (\($0))" } ?? ""))
        line("Successful requests:", "\(ok.count)")
        line("Failed requests:", "\(failed)")
        if let e = outcomes.first(where: { !$0.ok })?.error { line("First failure:", e) }
        line("Maximum request concurrency:", maxConcurrency.map(String.init) ?? "none")
        line("Benchmark duration (s):", String(format: "%.2f", duration))
        line("Total input tokens:", "\(input)")
        line("Total generated tokens:", "\(output)")
        line("Request throughput (req/s):", String(format: "%.2f", Double(ok.count) / duration))
        line("Output token throughput (tok/s):", String(format: "%.2f", Double(output) / duration))
        line("Total token throughput (tok/s):", String(format: "%.2f", Double(input + output) / duration))
        for (title, name, values) in [("Time to First Token", "TTFT", ttft), ("Time per Output Token (excl. 1st token)", "TPOT", tpot),
                                      ("Inter-token Latency", "ITL", itl), ("End-to-end Latency", "E2EL", e2e)] {
            let pad = max(0, 50 - title.count - 2) / 2
            print(String(repeating: "-", count: pad) + title + String(repeating: "-", count: max(0, 50 - title.count - pad)))
            line("Mean \(name) (ms):", String(format: "%.2f", Stats.mean(values)))
            line("Median \(name) (ms):", String(format: "%.2f", Stats.percentile(values, 50)))
            line("P99 \(name) (ms):", String(format: "%.2f", Stats.percentile(values, 99)))
        }
        print(String(repeating: "=", count: 50))
        guard let jsonOut else { return }
        // Per request in request order, as vllm bench serve --save-detailed writes them (seconds).
        let detailed: [String: Any] = [
            "input_lens": outcomes.map(\.promptTokens), "output_lens": outcomes.map(\.outputTokens),
            "ttfts": outcomes.map(\.ttft), "itls": outcomes.map(\.itl), "errors": outcomes.map(\.error),
        ]
        let summary: [String: Any] = detailed.merging([
            "label": label ?? "", "completed": ok.count, "failed": failed, "duration": duration, "total_input_tokens": input,
            "total_output_tokens": output, "request_throughput": Double(ok.count) / duration,
            "output_throughput": Double(output) / duration, "max_concurrency": maxConcurrency ?? 0,
            "mean_ttft_ms": Stats.mean(ttft), "median_ttft_ms": Stats.percentile(ttft, 50), "p99_ttft_ms": Stats.percentile(ttft, 99),
            "mean_tpot_ms": Stats.mean(tpot), "median_tpot_ms": Stats.percentile(tpot, 50), "p99_tpot_ms": Stats.percentile(tpot, 99),
            "mean_itl_ms": Stats.mean(itl), "median_itl_ms": Stats.percentile(itl, 50), "p99_itl_ms": Stats.percentile(itl, 99),
            "mean_e2el_ms": Stats.mean(e2e), "median_e2el_ms": Stats.percentile(e2e, 50), "p99_e2el_ms": Stats.percentile(e2e, 99),
        ]) { a, _ in a }
        if let data = try? JSONSerialization.data(withJSONObject: summary, options: [.prettyPrinted, .sortedKeys]) {
            do { try data.write(to: URL(fileURLWithPath: jsonOut)) } catch { FileHandle.standardError.write(Data("bench serve: cannot write \(jsonOut): \(error)\n".utf8)) }
        }
    }
}

/// Outcomes written by the request threads.
final class Results: @unchecked Sendable {
    private let lock = NSLock()
    private var outcomes: [BenchServe.Outcome]
    private var finished = 0
    init(count: Int) { outcomes = Array(repeating: .init(), count: count) }
    /// Stores one outcome; returns how many are done.
    func store(_ o: BenchServe.Outcome, at i: Int) -> Int {
        lock.lock(); defer { lock.unlock() }
        outcomes[i] = o
        finished += 1
        return finished
    }
    var all: [BenchServe.Outcome] { lock.lock(); defer { lock.unlock() }; return outcomes }
}

/// Means and percentiles as numpy computes them (linear interpolation).
enum Stats {
    static func mean(_ v: [Double]) -> Double { v.isEmpty ? 0 : v.reduce(0, +) / Double(v.count) }
    static func percentile(_ v: [Double], _ p: Double) -> Double {
        guard !v.isEmpty else { return 0 }
        let s = v.sorted()
        let x = p / 100 * Double(s.count - 1)
        let i = Int(x), f = x - Double(i)
        return i + 1 < s.count ? s[i] * (1 - f) + s[i + 1] * f : s[i]
    }
}
