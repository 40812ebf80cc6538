import TorusTensor

/// One named tensor inside a `ParameterStore`.
public struct ParameterEntry: Sendable, Equatable {
    public let name: String
    public let shape: [Int]
    public let offset: Int
    public var count: Int { shape.reduce(1, *) }
}

/// Named tensors laid out back to back in one flat buffer, in a fixed order.
///
/// Parameters, gradients and optimizer state all use this layout, so a whole set can be
/// reduced, copied or updated as one buffer (or in contiguous buckets).
public final class ParameterStore: @unchecked Sendable {
    /// All values, in `entries` order.
    public let flat: Tensor
    /// The named tensors, in layout order.
    public let entries: [ParameterEntry]
    private let index: [String: Int]

    /// A zero-filled store with the given names and shapes.
    public init(layout: [(name: String, shape: [Int])]) {
        var entries: [ParameterEntry] = []
        var offset = 0
        for (name, shape) in layout {
            entries.append(ParameterEntry(name: name, shape: shape, offset: offset))
            offset += shape.reduce(1, *)
        }
        self.entries = entries
        self.flat = Tensor(zeros: [offset])
        var index: [String: Int] = [:]
        for (i, e) in entries.enumerated() { index[e.name] = i }
        self.index = index
    }

    /// A zero-filled store with the same layout.
    public func zerosLike() -> ParameterStore {
        ParameterStore(layout: entries.map { ($0.name, $0.shape) })
    }

    /// The entry with this name, if any.
    public func entry(_ name: String) -> ParameterEntry? { index[name].map { entries[$0] } }

    /// A view of the named tensor. The name must exist.
    public func tensor(_ name: String) -> Tensor {
        guard let e = entry(name) else { preconditionFailure("no parameter named \(name)") }
        return flat.view(offset: e.offset, shape: e.shape)
    }

    /// Total number of values.
    public var count: Int { flat.count }
}
