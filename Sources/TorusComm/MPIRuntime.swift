import CMPI
import Foundation

/// Process-wide MPI initialisation and shutdown. MPI can be initialised once per process;
/// the world communicator is created on first use and MPI is finalised by `finalize()`.
public enum MPIRuntime {
    nonisolated(unsafe) private static var worldCommunicator: Communicator?
    private static let lock = NSLock()

    /// Whether this process was started by `mpirun` (Open MPI sets these variables).
    public static var launchedByMPIRun: Bool {
        let env = ProcessInfo.processInfo.environment
        return env["OMPI_COMM_WORLD_SIZE"] != nil || env["PMIX_RANK"] != nil
    }

    /// The world communicator; initialises MPI with `MPI_THREAD_MULTIPLE` on first use.
    /// Without `mpirun` this is a real one-rank world (Open MPI singleton).
    public static func world() throws -> Communicator {
        lock.lock(); defer { lock.unlock() }
        if let w = worldCommunicator { return w }
        var provided: Int32 = 0
        var initialized: Int32 = 0
        MPI_Initialized(&initialized)
        if initialized == 0 {
            let code = MPI_Init_thread(nil, nil, Int32(MPI_THREAD_MULTIPLE), &provided)
            if code != MPI_SUCCESS { throw MPIError(call: "MPI_Init_thread", rank: -1, code: code, message: MPIError.text(for: code)) }
        }
        let comm = torus_mpi_comm_world()
        MPI_Comm_set_errhandler(comm, torus_mpi_errors_return())
        let w = Communicator(handle: comm, owned: false)
        worldCommunicator = w
        return w
    }

    /// Thread support level granted by MPI (`MPI_THREAD_MULTIPLE` is 3).
    public static var threadLevel: Int {
        var level: Int32 = 0
        MPI_Query_thread(&level)
        return Int(level)
    }

    /// Finalises MPI if it was initialised and not yet finalised.
    public static func finalize() {
        lock.lock(); defer { lock.unlock() }
        var initialized: Int32 = 0, finalized: Int32 = 0
        MPI_Initialized(&initialized)
        MPI_Finalized(&finalized)
        if initialized != 0 && finalized == 0 {
            worldCommunicator = nil
            MPI_Finalize()
        }
    }
}
