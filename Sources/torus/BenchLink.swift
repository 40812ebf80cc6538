import ArgumentParser
import Foundation
import TorusComm
import TorusTensor

/// Point-to-point latency and bandwidth between rank 0 and every other rank: what a user checks
/// first on a new cluster (and how the simulated cluster's shaping is verified).
struct BenchLink: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "link",
        abstract: "Ping-pong latency (one float) and bandwidth (large messages) from rank 0 to each other rank.")

    @Option(help: "Round trips for the latency figure.") var roundTrips: Int = 200
    @Option(help: "Message size for the bandwidth figure, in MiB.") var megabytes: Double = 16
    @Option(help: "Messages each way for the bandwidth figure.") var messages: Int = 4

    func run() throws {
        let world = try MPIRuntime.world()
        guard world.size >= 2 else { throw ValidationErrorMessage("bench link needs at least 2 ranks (run it under mpirun -np 2 or more)") }
        guard roundTrips >= 1, messages >= 1, megabytes > 0 else { throw ValidationErrorMessage("--round-trips, --messages and --megabytes must be positive") }
        let small = Tensor(zeros: [1])
        let big = Tensor(zeros: [max(1, Int(megabytes * 1_048_576) / 4)])
        if world.rank == 0 {
            print("link: rank 0 to each rank, \(roundTrips) round trips of 4 bytes, \(messages) x \(String(format: "%.1f", megabytes)) MiB each way")
        }
        for peer in 1..<world.size {
            try world.barrier()
            guard world.rank == 0 || world.rank == peer else { continue }
            let other = world.rank == 0 ? peer : 0
            var trips: [Double] = []
            for _ in 0..<(roundTrips + 5) {
                let t0 = DispatchTime.now().uptimeNanoseconds
                if world.rank == 0 {
                    try world.send(small, to: other, tag: MessageTag.of(.probe, 1))
                    try world.recv(small, from: other, tag: MessageTag.of(.probe, 2))
                } else {
                    try world.recv(small, from: other, tag: MessageTag.of(.probe, 1))
                    try world.send(small, to: other, tag: MessageTag.of(.probe, 2))
                }
                trips.append(Double(DispatchTime.now().uptimeNanoseconds - t0) / 1e3)
            }
            trips = Array(trips.dropFirst(5)).sorted()
            let t0 = DispatchTime.now().uptimeNanoseconds
            for i in 0..<messages {
                if world.rank == 0 { try world.send(big, to: other, tag: MessageTag.of(.probe, 10 + i)) } else { try world.recv(big, from: other, tag: MessageTag.of(.probe, 10 + i)) }
            }
            // The last message's acknowledgement closes the window.
            if world.rank == 0 { try world.recv(small, from: other, tag: MessageTag.of(.probe, 3)) } else { try world.send(small, to: other, tag: MessageTag.of(.probe, 3)) }
            let seconds = Double(DispatchTime.now().uptimeNanoseconds - t0) / 1e9
            if world.rank == 0 {
                let gbit = Double(messages * big.count * 4) * 8 / seconds / 1e9
                print(String(format: "rank 0 <-> rank %d: round trip median %.1f us (p10 %.1f, p90 %.1f), one-way latency ~%.1f us; bandwidth %.2f Gbit/s",
                             peer, trips[trips.count / 2], trips[trips.count / 10], trips[trips.count * 9 / 10], trips[trips.count / 2] / 2, gbit))
            }
        }
    }
}
