import ArgumentParser
import Foundation
import TorusComm
import TorusTrace

@main
struct Torus: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "torus",
        abstract: "Distributed training and serving of long-context LLaMA models over MPI.",
        subcommands: [InitCommand.self, TrainCommand.self, PlanCommand.self, LaunchCommand.self, DataCommand.self, EvalCommand.self, TraceCommand.self, CurveCommand.self, GenerateCommand.self, ServeCommand.self, BenchCommand.self, CheckCommand.self])

    static func main() {
        // Progress lines reach a log file or pipe as they are printed.
        setvbuf(stdout, nil, _IOLBF, 0)
        ProcessSetup.prepare()
        // TORUS_TRACE=DIR records this rank's compute and communication spans into DIR.
        let traceDir = ProcessInfo.processInfo.environment["TORUS_TRACE"]
        if traceDir != nil {
            Timeline.current = Timeline(rank: ProcessInfo.processInfo.environment["OMPI_COMM_WORLD_RANK"].flatMap(Int.init) ?? 0)
        }
        func writeTrace() {
            guard let traceDir, let t = Timeline.current else { return }
            do { try t.write(to: traceDir) } catch { warn("torus: cannot write the timeline to \(traceDir): \(error)") }
        }
        do {
            var command = try parseAsRoot()
            try command.run()
            writeTrace()
            MPIRuntime.finalize()
        } catch {
            writeTrace()
            MPIRuntime.finalize()
            exit(withError: error)
        }
    }
}

/// Prints to standard error.
func warn(_ message: String) {
    FileHandle.standardError.write(Data((message + "\n").utf8))
}
