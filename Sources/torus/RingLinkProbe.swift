import Foundation
import TorusComm
import TorusTensor
import TorusTrace

/// The link as a ring method sees it: every rank sends to the next and receives from the
/// previous at once. Latency from small exchanges, bandwidth from large ones (bytes one way per
/// rank per second); the same for every rank (the slowest rank's figures).
enum RingLinkProbe {
    static func measure(_ world: Communicator, megabytes: Int = 8, messages: Int = 4, exchanges: Int = 50) throws -> OverlapReport.LinkModel {
        let next = (world.rank + 1) % world.size, prev = (world.rank + world.size - 1) % world.size
        func exchange(_ out: Tensor, _ into: Tensor, _ index: Int) throws {
            let r = try world.irecv(into, from: prev, tag: MessageTag.of(.probe, 100 + index))
            let s = try world.isend(out, to: next, tag: MessageTag.of(.probe, 100 + index))
            try r.wait(); try s.wait()
        }
        let small = Tensor(zeros: [1]), smallIn = Tensor(zeros: [1])
        try world.barrier()
        let t0 = DispatchTime.now().uptimeNanoseconds
        for i in 0..<exchanges { try exchange(small, smallIn, i % 2) }
        let latency = Double(DispatchTime.now().uptimeNanoseconds - t0) / 1e9 / Double(exchanges)
        let big = Tensor(zeros: [megabytes << 18]), bigIn = Tensor(zeros: [megabytes << 18])
        try exchange(big, bigIn, 2)  // warm-up
        try world.barrier()
        let t1 = DispatchTime.now().uptimeNanoseconds
        for i in 0..<messages { try exchange(big, bigIn, 3 + i % 2) }
        let seconds = Double(DispatchTime.now().uptimeNanoseconds - t1) / 1e9
        let worst = try world.allReduce([latency, seconds], op: .max)
        return OverlapReport.LinkModel(latency: worst[0], bytesPerSecond: Double(messages * big.count * 4) / worst[1])
    }
}
