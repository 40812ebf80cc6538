import CMPI

/// The point-to-point message streams of Torus's algorithms. Each stream's messages are
/// numbered from 0 (a ring step, a step and part, a stage and micro-batch); `MessageTag`
/// turns a stream and a number into the MPI tag, so no two streams ever share a tag however
/// large the group.
public enum MessageKind: Int, CaseIterable, Sendable {
    /// Ring Attention forward: keys and values passed along the ring, one message per step.
    case ringKeysValues
    /// Ring Attention backward: keys and values passed along the ring.
    case ringBackwardKeysValues
    /// Ring Attention backward: key and value gradients travelling with their block.
    case ringGradients
    /// TokenRing forward: query blocks passed along the ring (step and part).
    case tokenRingQueries
    /// TokenRing forward: partial outputs returned to their owner.
    case tokenRingPartials
    /// TokenRing backward: query, output-gradient and statistics packs (step and part).
    case tokenRingBackwardPacks
    /// TokenRing backward: partial query gradients returned to their owner.
    case tokenRingBackwardPartials
    /// Pipeline: activations sent to the next stage (receiving virtual stage, micro-batch).
    case pipelineActivations
    /// Pipeline: activation gradients sent to the previous stage.
    case pipelineGradients
    /// Serving: a step's plan header, from rank 0.
    case servePlanHeader
    /// Serving: a step's plan body, from rank 0.
    case servePlan
    /// Serving: heartbeats to rank 0.
    case serveHeartbeat
    /// `torus bench link` and `torus check comm` probes.
    case probe
}

/// One allocator of point-to-point tags: message `index` of stream `kind` has tag
/// `(index + 1) * kinds + kind`, so streams never collide and tag 0 stays free.
public enum MessageTag {
    /// The largest tag MPI guarantees on every implementation.
    public static let portableUpperBound = 32767

    /// The tag of message `index` (0 or more) of `kind`.
    public static func of(_ kind: MessageKind, _ index: Int) -> Int {
        precondition(index >= 0, "message index \(index) of \(kind) is negative")
        return (index + 1) * MessageKind.allCases.count + kind.rawValue
    }

    /// Whether messages with `tag` belong on the timeline: not heartbeats, which are liveness
    /// signals from background threads, not the algorithms' communication.
    public static func isTraced(_ tag: Int) -> Bool {
        tag <= 0 || tag % MessageKind.allCases.count != MessageKind.serveHeartbeat.rawValue
    }

    /// Throws unless the stream's messages 0..<count all have tags within `upperBound`.
    public static func check(_ kind: MessageKind, count: Int, upperBound: Int, what: String) throws {
        guard count > 0 else { return }
        let last = of(kind, count - 1)
        if last > upperBound {
            throw MessageTagError(kind: kind, count: count, largestTag: last, upperBound: upperBound, what: what)
        }
    }
}

/// A plan needs more tags than the MPI library accepts.
public struct MessageTagError: Error, CustomStringConvertible {
    public let kind: MessageKind
    public let count: Int
    public let largestTag: Int
    public let upperBound: Int
    public let what: String
    public var description: String {
        "\(what) numbers \(count) \(kind) messages, up to tag \(largestTag), past this MPI library's MPI_TAG_UB \(upperBound)"
    }
}

extension Communicator {
    /// The largest tag this communicator accepts (MPI_TAG_UB).
    public var tagUpperBound: Int { Int(torus_mpi_tag_upper_bound(handle)) }
}
