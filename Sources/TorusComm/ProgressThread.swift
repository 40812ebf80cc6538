import CMPI
import Foundation

/// Drives Open MPI's progress engine from a background thread while the caller computes.
///
/// Open MPI moves nonblocking transfers (rendezvous, fragmented shared-memory copies, TCP)
/// only while some thread is inside MPI. This thread calls `MPI_Iprobe` every `interval`,
/// which runs the progress engine for all pending requests without touching the caller's
/// request objects (concurrent use of one request from two threads is not allowed). Needs
/// `MPI_THREAD_MULTIPLE`, which `MPIRuntime` requests.
public final class ProgressThread: @unchecked Sendable {
    private let comm: Communicator
    private let interval: useconds_t
    private let lock = NSLock()
    private var running = false

    public init(comm: Communicator, intervalMicroseconds: Int = 50) {
        self.comm = comm
        self.interval = useconds_t(max(1, intervalMicroseconds))
    }

    /// Whether the MPI library allows calls from this extra thread.
    public static var supported: Bool { MPIRuntime.threadLevel >= Int(MPI_THREAD_MULTIPLE) }

    public func start() {
        lock.lock(); defer { lock.unlock() }
        guard !running, Self.supported else { return }
        running = true
        let t = Thread { [weak self] in self?.loop() }
        t.name = "torus-mpi-progress"
        t.start()
    }

    public func stop() {
        lock.lock()
        running = false
        lock.unlock()
        // Let the loop observe the flag before the caller tears down communicators.
        while isLooping { usleep(interval) }
    }

    private var looping = false
    private var isLooping: Bool { lock.lock(); defer { lock.unlock() }; return looping }

    private func loop() {
        lock.lock(); looping = true; lock.unlock()
        var flag: Int32 = 0
        while true {
            lock.lock()
            let go = running
            lock.unlock()
            if !go { break }
            MPI_Iprobe(torus_mpi_any_source(), torus_mpi_any_tag(), comm.handle, &flag, torus_mpi_status_ignore())
            usleep(interval)
        }
        lock.lock(); looping = false; lock.unlock()
    }

    deinit { stop() }
}
