import ArgumentParser
import Foundation
import TorusComm
import TorusTensor

struct CheckCommand: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "check",
        abstract: "Self-checks of the installation.", subcommands: [CheckComm.self, CheckAttention.self, CheckFusion.self])
}

/// Runs every communicator operation across the ranks of `mpirun` and verifies the results
/// against values each rank can compute on its own. Exits non-zero on the first mismatch.
struct CheckComm: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "comm",
        abstract: "Verify MPI collectives and a nonblocking ring exchange across the ranks of this job.")

    @Option(help: "Floats per message.") var count: Int = 1000
    @Flag(help: "Print one line per check on every rank.") var verbose = false

    func run() throws {
        let world = try MPIRuntime.world()
        let report = try CommunicatorChecks(comm: world, count: count).runAll()
        if verbose || world.rank == 0 {
            for line in report { print("rank \(world.rank): \(line)") }
        }
        try world.barrier()
        if world.rank == 0 { print("comm check passed on \(world.size) ranks (MPI thread level \(MPIRuntime.threadLevel), MPI_TAG_UB \(world.tagUpperBound))") }
    }
}
