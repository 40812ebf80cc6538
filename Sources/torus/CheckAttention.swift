import ArgumentParser
import Foundation
import TorusComm
import TorusParallel

/// Sequence-parallel attention against the single-rank computation, for every layout,
/// causal and not, with and without grouped-query attention, on the ranks of this job.
struct CheckAttention: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "attention",
        abstract: "Verify sequence-parallel attention (out, lse, dQ, dK, dV) against one rank on the same inputs.")

    @Option(help: "Method: ring or tokenring.") var method: String = "ring"
    @Option(help: "Tokens per zigzag chunk (the sequence is 2 x ranks x this).") var chunk: Int = 5
    @Option(help: "Largest allowed absolute error.") var tolerance: Double = 2e-5

    func run() throws {
        let chosen = try SequenceParallelMethod(name: method)
        let world = try MPIRuntime.world()
        let checks = SequenceParallelChecks(comm: world, method: chosen, chunkTokens: chunk)
        let passed = try reportChecks(SequenceParallelChecks.allCases, label: "\(method) P=\(world.size)", rank: world.rank,
                                      tolerance: tolerance, run: checks.run)
        if !passed { throw ValidationErrorMessage("\(method) attention differs from the single-rank computation by more than \(tolerance)") }
        if world.rank == 0 { print("attention check passed: \(method) on \(world.size) ranks") }
    }
}

/// A chunk-reuse prefill split over the ranks of this job against the same prefill on one
/// rank, for every selector and layout.
struct CheckFusion: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "fusion",
        abstract: "Verify chunk-reuse prefill across sequence-parallel ranks (logits, blended KV, recomputed rows) against one rank.")

    @Option(help: "Method: ring or tokenring.") var method: String = "ring"
    @Option(help: "Largest allowed absolute error.") var tolerance: Double = 1e-4

    func run() throws {
        let chosen = try SequenceParallelMethod(name: method)
        let world = try MPIRuntime.world()
        let checks = try ChunkFusionChecks(comm: world, method: chosen)
        let passed = try reportChecks(checks.cases, label: "\(method) P=\(world.size)", rank: world.rank, tolerance: tolerance, run: checks.run)
        if !passed { throw ValidationErrorMessage("chunk fusion across \(world.size) ranks differs from one rank by more than \(tolerance)") }
        if world.rank == 0 { print("fusion check passed: \(method) on \(world.size) ranks") }
    }
}

/// Runs every case (on every rank), prints one line per case on rank 0 with its errors, and
/// returns whether every error is within `tolerance`.
func reportChecks<C: CustomStringConvertible>(_ cases: [C], label: String, rank: Int, tolerance: Double,
                                              run: (C) throws -> [String: Double]) throws -> Bool {
    var passed = true
    for c in cases {
        let errors = try run(c)
        let worst = errors.values.max() ?? .infinity
        if worst > tolerance { passed = false }
        if rank == 0 {
            let detail = errors.keys.sorted().map { String(format: "%@ %.1e", $0, errors[$0] ?? .nan) }.joined(separator: "  ")
            print("\(worst <= tolerance ? "ok  " : "FAIL") \(label) \(c): \(detail)")
        }
    }
    return passed
}
