import Foundation
import Testing
import TorusModel

@Suite struct CLITests {
    func tempDir() -> String {
        let d = NSTemporaryDirectory() + "torus-cli-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
        try? FileManager.default.createDirectory(atPath: d, withIntermediateDirectories: true)
        return d
    }

    func writeConfig(_ dir: String, extra: String = "") throws -> String {
        let path = dir + "/tiny.yaml"
        try """
        \(TestYAML.model(maxPositions: 128))
        seed: 7
        \(extra)
        """.write(toFile: path, atomically: true, encoding: .utf8)
        return path
    }

    /// A fresh model in the default RAG tokenizer at `dir`/model.
    func writeRAGModel(_ dir: String) throws {
        try """
        \(TestYAML.model(vocab: 1408, maxPositions: 1024))
        seed: 7
        """.write(toFile: dir + "/m.yaml", atomically: true, encoding: .utf8)
        #expect(try TorusBinary.torus(["init", "--config", dir + "/m.yaml", "--out", dir + "/model"]).status == 0)
        try? FileManager.default.removeItem(atPath: dir + "/model/tokenizer.json")
        try FileManager.default.copyItem(atPath: ClientPython.repository + "/configs/rag-tokenizer.json", toPath: dir + "/model/tokenizer.json")
    }

    /// `torus bench rag` on a fresh model in the default RAG tokenizer: full prefill is its own
    /// reference (KL 0), CacheBlend at ratio 1 recomputes every cached token and matches it, reuse
    /// unchanged differs; the table and plot are written.
    @Test func benchRagComparesMethodsAgainstFullPrefill() throws {
        let dir = tempDir()
        try writeRAGModel(dir)
        let r = try TorusBinary.torus(["bench", "rag", "--model", dir + "/model", "--requests", "6", "--worlds", "1", "--documents", "2-3",
                                       "--methods", "full,unchanged,cacheblend", "--ratios", "1", "--out", dir + "/bench"], timeout: 300)
        #expect(r.status == 0, "\(r.output)")
        func row(_ name: String) -> String { r.stdout.split(separator: "\n").first { $0.hasPrefix(name) }.map(String.init) ?? "" }
        #expect(row("full ").contains("KL med 0.00e+00"), "\(r.stdout)")
        #expect(row("cacheblend r=1.00").contains("recompute 100.0% tokens"), "\(r.stdout)")
        let kl = { (line: String) in Double(line.components(separatedBy: "KL med ").last?.split(separator: " ").first ?? "") ?? -1 }
        #expect(kl(row("cacheblend r=1.00")) < 1e-6 && kl(row("unchanged")) > kl(row("cacheblend r=1.00")), "\(r.stdout)")
        #expect(FileManager.default.fileExists(atPath: dir + "/bench/rag.json") && FileManager.default.fileExists(atPath: dir + "/bench/rag.svg"))
    }

    /// `--split-documents` cuts each document into two chunks (the saved trace's documents join
    /// back into the prompt) and `--precompute-alone` stores every chunk before the trace, so
    /// every chunk of every request hits.
    @Test func benchRagSplitsDocumentsAndPrecomputesChunksAlone() throws {
        let dir = tempDir()
        try writeRAGModel(dir)
        let r = try TorusBinary.torus(["bench", "rag", "--model", dir + "/model", "--requests", "6", "--worlds", "1", "--documents", "2-3",
                                       "--methods", "full,unchanged", "--split-documents", "--precompute-alone",
                                       "--save-trace", dir + "/trace", "--out", dir + "/bench"], timeout: 300)
        #expect(r.status == 0, "\(r.output)")
        let unchanged = r.stdout.split(separator: "\n").first { $0.hasPrefix("unchanged") }.map(String.init) ?? ""
        #expect(unchanged.contains("chunk hits 100%"), "\(r.stdout)")
        let fields = try String(contentsOfFile: dir + "/trace-documents.jsonl", encoding: .utf8).split(separator: "\n")
        let inline = try String(contentsOfFile: dir + "/trace-inline.jsonl", encoding: .utf8).split(separator: "\n")
        #expect(fields.count == 6 && inline.count == 6)
        for (f, i) in zip(fields, inline) {
            let a = try JSONSerialization.jsonObject(with: Data(f.utf8)) as? [String: Any] ?? [:]
            let b = try JSONSerialization.jsonObject(with: Data(i.utf8)) as? [String: Any] ?? [:]
            let documents = a["documents"] as? [String] ?? []
            #expect((4...6).contains(documents.count) && documents.filter { $0.hasPrefix("Doc: ") }.count * 2 == documents.count)
            #expect(documents.joined() + (a["prompt"] as? String ?? "") == b["prompt"] as? String)
        }
    }

    /// `torus bench kernels` prints the measured limits (FMA peak, copy bandwidth, sgemm
    /// ceiling) and every figure against them; an `OPENBLAS_CORETYPE` forcing OpenBLAS's
    /// generic SSE3 kernels (Prescott, several times slower than the AVX2 or AVX-512 kernels of
    /// any x86-64 CPU this runs on) is named once with the measured factor and the way out.
    @Test func benchKernelsMeasuresTheLimitsAndNamesASlowForcedCore() throws {
        let home = tempDir()
        let r = try TorusBinary.run(TorusBinary.path, ["bench", "kernels", "--steps", "1", "--batch", "1", "--seq-len", "64"],
                                    environment: ["OPENBLAS_CORETYPE": "Prescott", "TORUS_BLAS_CORE": "", "HOME": home, "XDG_CACHE_HOME": home + "/.cache"])
        #expect(r.status == 0, "\(r.output)")
        #expect(r.stdout.contains("limit: fp32 FMA peak") && r.stdout.contains("copy bandwidth"), "\(r.output)")
        #expect(r.stdout.contains("limit: sgemm ceiling") && r.stdout.contains("of the measured FMA peak"), "\(r.output)")
        #expect(r.stdout.contains("of the FMA peak") && r.stdout.contains("of the sgemm ceiling"), "\(r.output)")
        #expect(!r.stdout.contains("134.4"))
        let warning = r.stderr.split(separator: "\n").filter { $0.contains("OPENBLAS_CORETYPE=Prescott in the environment") }
        #expect(warning.count == 1, "\(r.stderr)")
        #expect(warning.first?.contains("TORUS_BLAS_CORE=auto lets torus choose") == true, "\(r.stderr)")
        #expect(FileManager.default.fileExists(atPath: home + "/.cache/torus/blas-cores.json"))
    }

    @Test func initEvalGenerateEndToEnd() throws {
        let dir = tempDir()
        let config = try writeConfig(dir)
        let initRun = try TorusBinary.torus(["init", "--config", config, "--out", dir + "/model"])
        #expect(initRun.status == 0, "\(initRun.output)")
        let loaded = try HFCheckpoint.load(directory: dir + "/model")
        #expect(loaded.config.numKeyValueHeads == 2)

        try String(repeating: "the quick brown fox jumps over the lazy dog. ", count: 20)
            .write(toFile: dir + "/text.txt", atomically: true, encoding: .utf8)
        let eval = try TorusBinary.torus(["eval", "--model", dir + "/model", "--data", dir + "/text.txt", "--seq-len", "64"])
        #expect(eval.status == 0, "\(eval.output)")
        // A fresh model is near uniform over 256 byte tokens: loss close to ln(256) = 5.545.
        let loss = eval.stdout.components(separatedBy: "mean loss ").last.flatMap { Double($0.prefix(6)) }
        #expect(loss.map { abs($0 - 5.545) < 0.2 } == true, "\(eval.stdout)")

        let gen = try TorusBinary.torus(["generate", "--model", dir + "/model", "--prompt-ids", "1,2,3", "--max-tokens", "5", "--ids"])
        #expect(gen.status == 0, "\(gen.output)")
        let ids = gen.stdout.trimmingCharacters(in: .whitespacesAndNewlines).split(separator: ",").compactMap { Int32($0) }
        #expect(ids == (try loaded.generate(prompt: [1, 2, 3], maxNewTokens: 5)))
        // --dtype bfloat16: the tokens of the model's bfloat16 layers.
        let reduced = try TorusBinary.torus(["generate", "--model", dir + "/model", "--prompt-ids", "1,2,3", "--max-tokens", "5", "--ids",
                                             "--dtype", "bfloat16"])
        #expect(reduced.status == 0, "\(reduced.output)")
        loaded.setInferencePrecision(.bfloat16)
        let reducedIDs = reduced.stdout.trimmingCharacters(in: .whitespacesAndNewlines).split(separator: ",").compactMap { Int32($0) }
        #expect(reducedIDs == (try loaded.generate(prompt: [1, 2, 3], maxNewTokens: 5)))
    }

    /// `torus eval --qa` reads `torus data synth --kind rag`'s question file through the model's
    /// tokenizer and counts every question, by kind.
    @Test func evalAnswersRAGQuestionFiles() throws {
        let dir = tempDir()
        try writeRAGModel(dir)
        let synth = try TorusBinary.torus(["data", "synth", "--kind", "rag", "--out", dir + "/data", "--train", "1", "--heldout", "9",
                                           "--documents", "2-3", "--no-filler", "--seed", "3"])
        #expect(synth.status == 0, "\(synth.output)")
        let r = try TorusBinary.torus(["eval", "--model", dir + "/model", "--data", dir + "/data/heldout.tokens",
                                       "--qa", dir + "/data/heldout.jsonl", "--seq-len", "64"])
        #expect(r.status == 0, "\(r.output)")
        #expect(r.stdout.contains("eval: answer accuracy") && r.stdout.contains("/9), two-hop"), "\(r.stdout)")
        let perKind = r.stdout.split(separator: "\n").filter { $0.hasPrefix("eval: RAG (") }
        let counted = perKind.compactMap { line in line.split(separator: "/").last.flatMap { Int($0.dropLast()) } }.reduce(0, +)
        #expect(!perKind.isEmpty && counted == 9, "\(r.stdout)")
    }

    @Test func badInputsGiveClearErrors() throws {
        let dir = tempDir()
        let unknown = try writeConfig(dir, extra: "learning_rate: 3")
        let r1 = try TorusBinary.torus(["init", "--config", unknown, "--out", dir + "/m"])
        #expect(r1.status != 0 && r1.stderr.contains("unknown key 'learning_rate'"), "\(r1.output)")

        let r2 = try TorusBinary.torus(["eval", "--model", dir + "/nope", "--data", unknown])
        #expect(r2.status != 0 && r2.stderr.contains("config.json does not exist"), "\(r2.output)")

        let config = try writeConfig(tempDir())
        _ = try TorusBinary.torus(["init", "--config", config, "--out", dir + "/model"])
        let r3 = try TorusBinary.torus(["generate", "--model", dir + "/model", "--prompt-ids", "1,999"])
        #expect(r3.status != 0 && r3.stderr.contains("token id 999 is outside the vocabulary [0, 256)"), "\(r3.output)")

        try TokenFile.write([1, 2, 300], to: dir + "/big.tokens")
        let r4 = try TorusBinary.torus(["eval", "--model", dir + "/model", "--data", dir + "/big.tokens"])
        #expect(r4.status != 0 && r4.stderr.contains("token 2 is 300, outside the vocabulary"), "\(r4.output)")
    }
}
