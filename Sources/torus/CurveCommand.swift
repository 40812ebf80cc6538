import ArgumentParser

struct CurveCommand: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "curve",
        abstract: "Draw the loss and held-out accuracy of training runs against tokens seen, the runs one after another (the stages of a curriculum).")

    @Argument(help: "Output directories of `torus train` (each with metrics.jsonl, and evaluation.jsonl when it evaluated), in training order.")
    var runs: [String]
    @Option(help: "SVG file to write.") var out: String

    func validate() throws {
        guard !runs.isEmpty else { throw ValidationError("name at least one run directory") }
    }

    func run() throws {
        try TrainingCurve.write(runs: runs, to: out)
        print("curve: \(out) (\(runs.count) run(s))")
    }
}
