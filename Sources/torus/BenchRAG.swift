import ArgumentParser
import Foundation
import TorusModel
import TorusServe
import TorusTensor
import TorusTrain

/// `torus bench rag`: chunk-reuse methods side by side on a synthetic RAG trace (CHUNK_REUSE.md's
/// protocol): quality against full prefill of the same prompt (KL at the first answer token,
/// top-1 agreement over the teacher-forced full-prefill answer, exact-match accuracy for
/// single- and two-document questions), recompute (tokens and FLOPs, check layers included)
/// and prefill time, with a table, a JSON file and an SVG plot of quality against recompute.
struct BenchRAG: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "rag",
        abstract: "Chunk-reuse methods against full prefill on a synthetic RAG trace.")

    @Option(help: "Hugging Face model directory (trained on synth_rag).") var model: String
    @Option(help: "Requests in the trace.") var requests: Int = 48
    @Option(help: "Dense layers in float32 or bfloat16 (as torus serve --dtype); every method runs in it.") var dtype: String = "float32"
    @Option(help: "Worlds the requests draw from (Zipf popularity; documents recur within a world).") var worlds: Int = 8
    @Option(help: "Seed of the corpus (the training config's seed: its held-out split).") var corpusSeed: UInt64 = 11
    @Option(help: "Seed of the trace.") var seed: UInt64 = 1
    @Option(help: "Documents per prompt, min-max.") var documents: String = "6-10"
    @Option(help: "Bytes each person's document is filled up to with filler sentences, min-max (the training corpus's 150-349; about 4.5 bytes a token).")
    var documentBytes: String = "150-349"
    @Flag(help: "Questions on a sister's document ask about whichever person it follows in that prompt (so a cached chunk's context misleads).")
    var movedSisters = false
    @Flag(help: "Every distractor with a sister brings her document, so prompts hold several (a sister's link then depends on the document before it).")
    var allSisters = false
    @Flag(help: "Each document cut into two chunks at the space nearest its middle, as a fixed-size chunker cuts, so a fact can straddle two chunks.")
    var splitDocuments = false
    @Flag(help: "Every chunk's KV computed alone from position 0 before the trace (a store filled offline, CacheBlend's setting) rather than captured in the first prompt that holds it.")
    var precomputeAlone = false
    @Option(help: "Recompute ratios for cacheblend, gradual and faithful, comma-separated.") var ratios: String = "0,0.05,0.1,0.15,0.2,0.3,0.5,1"
    @Option(help: "Methods, comma-separated: full, prefix, unchanged, epic, faithful, cacheblend, gradual, cachecraft (its alpha from --ratios), or epic+ one of cacheblend, faithful, gradual, cachecraft; none only writes --save-trace.")
    var methods: String = "full,prefix,unchanged,epic,faithful,cacheblend,gradual,cachecraft"
    @Option(help: "Answer tokens compared (teacher-forced) and decoded.") var answerTokens: Int = 32
    @Option(help: "Directory for rag.json and rag.svg.") var out: String = "runs/bench-rag"
    @Option(help: "Also write the trace as JSONL for 'torus bench serve --dataset': PREFIX-documents.jsonl (documents field, for torus serve --chunk-reuse) and PREFIX-inline.jsonl (documents in the prompt, for any server and vllm bench serve --dataset-name custom).")
    var saveTrace: String?
    @Option(help: "Output tokens per request in the saved trace.") var traceOutputTokens: Int = 16

    struct Request {
        var example: RAGExample
        var tokens: [Int32]
        var spans: [Range<Int>]
        var question: Int
    }

    struct Reference {
        var logits: [Float]
        var answer: [Int32]
        var correct: Bool
        var seconds: Double
        var flops: Double
    }

    struct Row: Codable {
        var method: String
        var ratio: Double?
        var requests: Int
        /// Requests that could reuse a chunk (one appeared before): quality is measured on these.
        var reuseRequests: Int
        var singleAccuracy: Double
        var twoHopAccuracy: Double
        /// Of the two-document questions, those on "the person in the previous document".
        var previousAccuracy: Double
        var klMedian: Double
        var klP95: Double
        var top1Median: Double
        var top1Mean: Double
        var recomputedShare: Double
        var flopsShare: Double
        var prefillMsMedian: Double
        var speedup: Double
        var hitRate: Double
    }

    func run() throws {
        BLASCoreCheck.warnOnce()
        let m = try HFCheckpoint.load(directory: model)
        m.setInferencePrecision(try InferencePrecision(option: dtype))
        try m.prepareServing(maxPositions: m.config.maxPositionEmbeddings)
        let parts = try RangeOption.parse(documents, option: "--documents", example: "6-10")
        let bytes = try RangeOption.parse(documentBytes, option: "--document-bytes", example: "900-1200")
        let ratioList = try ratios.split(separator: ",").map { s -> Double in
            guard let r = Double(s.trimmingCharacters(in: .whitespaces)), (0...1).contains(r) else {
                throw ValidationError("--ratios: '\(s)' is not a number in [0, 1]")
            }
            return r
        }
        let methodList = methods.split(separator: ",").map { String($0) }.filter { $0 != "none" }
        let known = ["prefix"] + ReusePolicy.names
        for name in methodList where !known.contains(name) {
            throw ValidationError("--methods: unknown method '\(name)'; known: \(known.joined(separator: ", "))")
        }
        let tokenizer = try ModelTokenizer.load(directory: model, vocabularySize: m.config.vocabSize)
        let trace = try makeTrace(config: m.config, range: parts, documentBytes: bytes, tokenizer: tokenizer)
        print("machine: \(BLASEnvironment.availableCores) cores, OpenBLAS core \(BLAS.coreName), \(BLAS.threads) BLAS threads")
        print("model: \(model), \(m.config.parameterCount) parameters, \(m.config.numHiddenLayers) layers")
        let chunkCounts = trace.map(\.spans.count), lengths = trace.map(\.tokens.count), chunkLengths = trace.flatMap { $0.spans.map(\.count) }
        print("trace: \(trace.count) requests from \(worlds) worlds (Zipf), \(chunkCounts.min() ?? 0)-\(chunkCounts.max() ?? 0) documents "
              + "of \(chunkLengths.min() ?? 0)-\(chunkLengths.max() ?? 0) tokens, \(lengths.min() ?? 0)-\(lengths.max() ?? 0) tokens per prompt; \(popularityLine(trace))")

        if let saveTrace { try writeTrace(trace, prefix: saveTrace) }
        guard !methodList.isEmpty else { return }
        print("reference: full prefill of every request ...")
        var references: [Reference] = []
        for (i, r) in trace.enumerated() {
            references.append(try reference(m, r, tokenizer))
            if (i + 1) % 16 == 0 { print("  \(i + 1)/\(trace.count)") }
        }
        print("quality (accuracy, KL, top-1) over the requests that could reuse a chunk; recompute, FLOPs and time over all")
        var rows: [Row] = []
        for name in methodList {
            // Each policy at each --ratios value of its knob (cachecraft's alpha, the others' ratio).
            // (Names were checked above: only "prefix", which has no policy, fails to select.)
            var base = ReusePolicy()
            let variants: [(ReusePolicy?, Double?)]
            if !base.select(name) {
                variants = [(nil, nil)]
            } else {
                variants = switch base.method {
                case .full, .unchanged, .epic: [(base, nil)]
                case .cachecraft: ratioList.map { var p = base; p.alpha = $0; return (p, $0) }
                case .cacheblend, .faithful, .gradual: ratioList.map { var p = base; p.ratio = $0; return (p, $0) }
                }
            }
            for (policy, ratio) in variants {
                let row = try measure(m, trace: trace, references: references, name: name, policy: policy, ratio: ratio,
                                      tokenizer: tokenizer)
                rows.append(row)
                print(format(row))
            }
        }
        try FileManager.default.createDirectory(atPath: out, withIntermediateDirectories: true)
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.prettyPrinted, .sortedKeys]
        encoder.keyEncodingStrategy = .convertToSnakeCase
        try encoder.encode(rows).write(to: URL(fileURLWithPath: out + "/rag.json"))
        try plot(rows).write(toFile: out + "/rag.svg", atomically: true, encoding: .utf8)
        print("table: \(out)/rag.json; plot (median KL against recompute): \(out)/rag.svg")
    }

    // MARK: - Trace

    func makeTrace(config: LlamaConfig, range: ClosedRange<Int>, documentBytes: ClosedRange<Int>, tokenizer: any TextTokenizer) throws -> [Request] {
        var corpus = RAGCorpus(seed: corpusSeed, documents: range, documentBytes: documentBytes)
        corpus.movedSisters = movedSisters
        corpus.allSisters = allSisters
        var g = SeededGenerator(seed: seed)
        // Zipf(1.2) over worlds: a few worlds (and so their documents) serve most requests.
        let weights = (1...worlds).map { 1 / pow(Double($0), 1.2) }
        let total = weights.reduce(0, +)
        var trace: [Request] = []
        var peopleCache: [Int: [RAGCorpus.Person]] = [:]
        var attempts = 0
        while trace.count < requests && attempts < requests * 20 {
            attempts += 1
            var u = Double(g.next() % 1_000_000) / 1_000_000 * total, w = 0
            while w < worlds - 1 && u >= weights[w] { u -= weights[w]; w += 1 }
            let people = peopleCache[w] ?? corpus.world(w, split: "heldout", count: RAGCorpus.peoplePerWorld)
            peopleCache[w] = people
            let e = corpus.example(Int(g.next() % 64), split: "heldout", world: w, people: people)
            var tokens: [Int32] = [], spans: [Range<Int>] = []
            for d in e.documents.flatMap({ splitDocuments ? Self.halves($0) : [$0] }) {
                let t = tokenizer.encode(d)
                spans.append(tokens.count..<(tokens.count + t.count))
                tokens += t
            }
            let q = tokenizer.encode(e.question)
            guard tokens.count + q.count + answerTokens + 1 <= config.maxPositionEmbeddings else { continue }
            trace.append(Request(example: e, tokens: tokens + q, spans: spans, question: q.count))
        }
        guard !trace.isEmpty else { throw ValidationError("no request fits max_position_embeddings \(config.maxPositionEmbeddings)") }
        return trace
    }

    /// `document` cut before the space nearest its middle byte (the second half starts with that
    /// space, so a byte-level BPE tokenizes the halves as it tokenizes the whole); whole when it
    /// has no space.
    static func halves(_ document: String) -> [String] {
        let bytes = Array(document.utf8), middle = bytes.count / 2
        let spaces = bytes.indices.filter { bytes[$0] == UInt8(ascii: " ") && $0 > 0 }
        guard let cut = spaces.min(by: { abs($0 - middle) < abs($1 - middle) }) else { return [document] }
        return [String(decoding: bytes[..<cut], as: UTF8.self), String(decoding: bytes[cut...], as: UTF8.self)]
    }

    /// The share of requests served by the top 5% of chunks.
    func popularityLine(_ trace: [Request]) -> String {
        var counts: [String: Int] = [:]
        for r in trace { for s in r.spans { counts[r.tokens[s].map(String.init).joined(separator: ","), default: 0] += 1 } }
        let ranked = counts.sorted { $0.value > $1.value }
        let top = Set(ranked.prefix(max(1, ranked.count / 20)).map(\.key))
        let served = trace.filter { r in r.spans.contains { top.contains(r.tokens[$0].map(String.init).joined(separator: ",")) } }.count
        return String(format: "%d distinct documents; the top 5%% appear in %.0f%% of requests", counts.count,
                      100 * Double(served) / Double(trace.count))
    }

    /// The trace as two JSONL request files (the same requests with documents as a field and inline).
    func writeTrace(_ trace: [Request], prefix: String) throws {
        let dir = URL(fileURLWithPath: prefix).deletingLastPathComponent().path
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        var field: [String] = [], inline: [String] = []
        for r in trace {
            let e = r.example
            let chunks = splitDocuments ? e.documents.flatMap(Self.halves) : e.documents
            let a = try JSONSerialization.data(withJSONObject: ["prompt": e.question, "documents": chunks, "output_tokens": traceOutputTokens],
                                               options: [.sortedKeys])
            let b = try JSONSerialization.data(withJSONObject: ["prompt": e.prompt, "output_tokens": traceOutputTokens], options: [.sortedKeys])
            field.append(String(decoding: a, as: UTF8.self))
            inline.append(String(decoding: b, as: UTF8.self))
        }
        try (field.joined(separator: "\n") + "\n").write(toFile: prefix + "-documents.jsonl", atomically: true, encoding: .utf8)
        try (inline.joined(separator: "\n") + "\n").write(toFile: prefix + "-inline.jsonl", atomically: true, encoding: .utf8)
        print("trace: \(prefix)-documents.jsonl and \(prefix)-inline.jsonl (\(trace.count) requests)")
    }

    // MARK: - Measuring

    func reference(_ m: LlamaModel, _ r: Request, _ tokenizer: any TextTokenizer) throws -> Reference {
        let kv = PromptKV(config: m.config, rows: r.tokens.count + answerTokens + 1)
        let t0 = Date()
        let result = try m.fuse(tokens: r.tokens, cached: [Bool](repeating: false, count: r.tokens.count), kv: kv, policy: .full)
        let seconds = -t0.timeIntervalSinceNow
        let answer = try decode(m, kv: kv, length: r.tokens.count, first: result.logits, stop: tokenizer.newlineToken)
        return Reference(logits: result.logits, answer: answer, correct: isCorrect(answer, r.example.answer, tokenizer), seconds: seconds,
                         flops: result.flops)
    }

    /// Greedy answer tokens after a prefill whose last logits are `first`, through the first
    /// `stop` (newline) token.
    func decode(_ m: LlamaModel, kv: PromptKV, length: Int, first: [Float], stop: Int32) throws -> [Int32] {
        var out: [Int32] = [Int32(argmax(first))]
        while out.count < answerTokens && out.last != stop {
            let logits = try m.extend(kv: kv, length: length + out.count - 1, tokens: [out[out.count - 1]])
            out.append(Int32(argmax(Array(UnsafeBufferPointer(start: logits.pointer, count: m.config.vocabSize)))))
        }
        return out
    }

    func isCorrect(_ answer: [Int32], _ expected: String, _ tokenizer: any TextTokenizer) -> Bool {
        QAEvaluation.answerLine(tokenizer.decode(answer)) == expected
    }

    func measure(_ m: LlamaModel, trace: [Request], references: [Reference], name: String, policy: ReusePolicy?,
                 ratio: Double?, tokenizer: any TextTokenizer) throws -> Row {
        let store = try ChunkStore(fingerprint: ChunkReuse.fingerprint(m), memoryBudget: 8 << 30)
        let reuse = ChunkReuse(store: store, policy: policy ?? ReusePolicy(method: .unchanged), tokenizer: ServeCommand.tokenizerIdentity(directory: model))
        var seenPrefixes = Set<[Int32]>()
        var kls: [Double] = [], top1: [Double] = [], seconds: [Double] = []
        var seenChunks = Set<[Int32]>()
        var single = (0, 0), twoHop = (0, 0), previous = (0, 0)
        var recomputed = 0, tokens = 0, chunks = 0, hits = 0
        var flops = 0.0, fullFlops = 0.0
        let vocab = m.config.vocabSize
        if precomputeAlone, let policy, policy.method != .full {
            // Each distinct chunk prefilled on its own (then a newline, so the chunk is not the
            // prompt's last token): the store captures it at position 0 after nothing.
            var done = Set<[Int32]>()
            for r in trace {
                for span in r.spans where done.insert(Array(r.tokens[span])).inserted {
                    let chunk = Array(r.tokens[span]) + [tokenizer.newlineToken]
                    _ = try reuse.prefill(model: m, tokens: chunk, spans: [0..<span.count], salt: nil, policy: ReusePolicy(method: .full),
                                          kv: PromptKV(config: m.config, rows: chunk.count + 1))
                }
            }
        }
        for (i, r) in trace.enumerated() {
            let ref = references[i], n = r.tokens.count
            let kv = PromptKV(config: m.config, rows: n + answerTokens + 1)
            var logits: [Float]
            let t0 = Date()
            if policy == nil {
                // Prefix caching: the longest run of leading documents some earlier prompt began
                // with is reused exactly; the rest is computed.
                var cachedRows = 0
                for s in r.spans where seenPrefixes.contains(Array(r.tokens[0..<s.upperBound])) { cachedRows = s.upperBound }
                for s in r.spans { seenPrefixes.insert(Array(r.tokens[0..<s.upperBound])) }
                let exact = PromptKV(config: m.config, rows: n)
                if cachedRows > 0 {
                    // The exact prefix KV, as a prefix cache would hold it (not timed).
                    _ = try m.fuse(tokens: Array(r.tokens[0..<cachedRows]), cached: [Bool](repeating: false, count: cachedRows),
                                   kv: exact, policy: .full)
                    for l in 0..<m.config.numHiddenLayers {
                        kv.keys[l].pointer.update(from: exact.keys[l].pointer, count: cachedRows * kv.width)
                        kv.values[l].pointer.update(from: exact.values[l].pointer, count: cachedRows * kv.width)
                    }
                }
                let start = Date()
                let result = try m.fuse(tokens: r.tokens, cached: (0..<n).map { $0 < cachedRows }, kv: kv, policy: .unchanged)
                seconds.append(-start.timeIntervalSinceNow)
                logits = result.logits
                recomputed += n - cachedRows
                flops += result.flops
                chunks += r.spans.count
                hits += r.spans.filter { $0.upperBound <= cachedRows }.count
            } else {
                let (l, report) = try reuse.prefill(model: m, tokens: r.tokens, spans: r.spans, salt: nil, policy: nil, kv: kv)
                seconds.append(-t0.timeIntervalSinceNow)
                logits = l
                recomputed += report.recomputedTokens
                flops += report.flops
                chunks += report.chunks
                hits += report.hits
            }
            tokens += n
            fullFlops += ref.flops
            // Quality is compared on requests that could reuse something (paired across methods).
            let reusable = r.spans.contains { seenChunks.contains(Array(r.tokens[$0])) }
            for s in r.spans { seenChunks.insert(Array(r.tokens[s])) }
            guard reusable else { continue }
            kls.append(ChunkReuse.klDivergence(ref.logits, logits))
            // Top-1 agreement over the full-prefill answer, teacher-forced on this method's cache.
            var agree = argmax(logits) == Int(ref.answer[0]) ? 1 : 0
            if ref.answer.count > 1 {
                let forced = try m.extend(kv: kv, length: n, tokens: Array(ref.answer.dropLast()))
                for j in 1..<ref.answer.count {
                    let row = Array(UnsafeBufferPointer(start: forced.pointer + (j - 1) * vocab, count: vocab))
                    if argmax(row) == Int(ref.answer[j]) { agree += 1 }
                }
            }
            top1.append(Double(agree) / Double(ref.answer.count))
            let answer = try decode(m, kv: kv, length: n, first: logits, stop: tokenizer.newlineToken)
            let ok = isCorrect(answer, r.example.answer, tokenizer)
            if r.example.hops == 2 { twoHop = (twoHop.0 + (ok ? 1 : 0), twoHop.1 + 1) } else { single = (single.0 + (ok ? 1 : 0), single.1 + 1) }
            if r.example.kind == "previous" { previous = (previous.0 + (ok ? 1 : 0), previous.1 + 1) }
        }
        let fullSeconds = references.map(\.seconds).sorted()[references.count / 2]
        let median = seconds.sorted()[seconds.count / 2]
        return Row(method: name, ratio: ratio, requests: trace.count, reuseRequests: kls.count,
                   singleAccuracy: single.1 == 0 ? 0 : Double(single.0) / Double(single.1),
                   twoHopAccuracy: twoHop.1 == 0 ? 0 : Double(twoHop.0) / Double(twoHop.1),
                   previousAccuracy: previous.1 == 0 ? 0 : Double(previous.0) / Double(previous.1),
                   klMedian: Stats.percentile(kls, 50), klP95: Stats.percentile(kls, 95),
                   top1Median: Stats.percentile(top1, 50), top1Mean: top1.reduce(0, +) / Double(max(top1.count, 1)),
                   recomputedShare: Double(recomputed) / Double(tokens), flopsShare: flops / fullFlops,
                   prefillMsMedian: median * 1000, speedup: fullSeconds / median, hitRate: chunks == 0 ? 0 : Double(hits) / Double(chunks))
    }

    func argmax(_ a: [Float]) -> Int { ChunkReuse.argmax(a) }

    // MARK: - Output

    func format(_ r: Row) -> String {
        let knob = r.method.hasSuffix("cachecraft") ? "a" : "r"
        let name = (r.ratio.map { String(format: "%@ %@=%.2f", r.method, knob, $0) } ?? r.method).padding(toLength: 22, withPad: " ", startingAt: 0)
        return name + String(format: " acc single %5.1f%%  two-hop %5.1f%% (previous %5.1f%%)  KL med %.2e p95 %.2e  top-1 med %.3f  recompute %5.1f%% tokens %5.1f%% FLOPs  "
                      + "prefill %7.1f ms (%.2fx full)  chunk hits %3.0f%%",
                      100 * r.singleAccuracy, 100 * r.twoHopAccuracy, 100 * r.previousAccuracy, r.klMedian, r.klP95, r.top1Median,
                      100 * r.recomputedShare, 100 * r.flopsShare, r.prefillMsMedian, r.speedup, 100 * r.hitRate)
    }

    /// Median KL (log scale) against the share of FLOPs recomputed, one series per method.
    func plot(_ rows: [Row]) -> String {
        // Exact methods (KL 0) sit on the floor, a decade below the smallest positive KL.
        let floorKL = (rows.map(\.klMedian).filter { $0 > 0 }.min() ?? 1e-6) / 10
        let colors = ["full": "#444444", "prefix": "#8c564b", "unchanged": "#d62728", "epic": "#9467bd", "faithful": "#ff7f0e", "gradual": "#17becf",
                      "cacheblend": "#1f77b4", "cachecraft": "#2ca02c"]
        var chart = SVGPlot(title: "Chunk reuse: median KL(full || method) at the first answer token vs FLOPs recomputed",
                            xLabel: "FLOPs recomputed (share of full prefill)", yLabel: "median KL", logY: true, xRange: 0...1)
        chart.xTick = { "\(Int(($0 * 100).rounded()))%" }
        for (method, color) in colors.sorted(by: { $0.key < $1.key }) {
            let series = rows.filter { $0.method == method }.sorted { $0.flopsShare < $1.flopsShare }
            guard !series.isEmpty else { continue }
            chart.series.append(.init(name: method, color: color, points: series.map { (min($0.flopsShare, 1), max($0.klMedian, floorKL)) }))
        }
        return SVGPlot.figure([chart])
    }
}
