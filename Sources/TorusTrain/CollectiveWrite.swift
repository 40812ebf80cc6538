import Foundation
import TorusComm
import TorusModel

/// Writes a directory that several ranks fill together, all or nothing: rank 0 prepares a
/// temporary sibling, every rank adds its files, and rank 0 completes it and renames it into
/// place only when every rank succeeded. Every rank must see the same file system (shared
/// storage across hosts), as for any checkpoint of a multi-host job.
public enum CollectiveWrite {
    /// Writes `final` with `write(temp)` on every rank (a rank with nothing to add does nothing)
    /// and `complete(temp)` on rank 0 before the rename; rank 0 creates `subdirectories` of the
    /// temporary directory first. Throws on every rank if any rank failed.
    public static func directory(_ final: String, comm: Communicator, subdirectories: [String] = [],
                                 write: (String) throws -> Void, complete: (String) throws -> Void) throws {
        let url = URL(fileURLWithPath: final).standardizedFileURL
        let parent = url.deletingLastPathComponent().path
        let temp = (parent as NSString).appendingPathComponent(".\(url.lastPathComponent).partial")
        let fm = FileManager.default
        do {
            try agree(comm, "preparing \(final)") {
                guard comm.rank == 0 else { return }
                try? fm.removeItem(atPath: temp)
                for dir in [temp] + subdirectories.map({ (temp as NSString).appendingPathComponent($0) }) {
                    do { try fm.createDirectory(atPath: dir, withIntermediateDirectories: true) } catch {
                        throw CheckpointError.io(path: dir, message: "cannot create directory: \(error.localizedDescription)")
                    }
                }
            }
            try agree(comm, "writing \(final)") { try write(temp) }
            try agree(comm, "completing \(final)") {
                guard comm.rank == 0 else { return }
                try complete(temp)
                try HFCheckpoint.replace(directory: url.path, with: temp)
            }
        } catch {
            if comm.rank == 0 { try? fm.removeItem(atPath: temp) }
            throw error
        }
    }

    /// Runs `body` on every rank; throws on every rank (naming the lowest failing rank) if it
    /// failed anywhere.
    public static func agree(_ comm: Communicator, _ what: String, _ body: () throws -> Void) throws {
        var failure: Error?
        do { try body() } catch { failure = error }
        let failed = try comm.allReduce([failure == nil ? Double(comm.size) : Double(comm.rank)], op: .min)[0]
        guard failed < Double(comm.size) else { return }
        if let failure { throw TrainError.checkpoint("\(what) failed on rank \(comm.rank): \(failure)") }
        throw TrainError.checkpoint("\(what) failed on rank \(Int(failed)) (its error is in that rank's output)")
    }
}
