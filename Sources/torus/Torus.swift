import ArgumentParser
import Foundation
import TorusComm

@main
struct Torus: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "torus",
        abstract: "Distributed training and serving of long-context LLaMA models over MPI.",
        subcommands: [InitCommand.self, TrainCommand.self, DataCommand.self, EvalCommand.self, GenerateCommand.self, BenchCommand.self, CheckCommand.self])

    static func main() {
        ProcessSetup.prepare()
        do {
            var command = try parseAsRoot()
            try command.run()
            MPIRuntime.finalize()
        } catch {
            MPIRuntime.finalize()
            exit(withError: error)
        }
    }
}

/// Prints to standard error.
func warn(_ message: String) {
    FileHandle.standardError.write(Data((message + "\n").utf8))
}
