#if canImport(Glibc)
import Glibc
#endif

/// A dense fp32 tensor in row-major order with reference semantics.
///
/// A tensor either owns its memory (allocated 64-byte aligned, zero-filled) or is a view into
/// another tensor's memory, which it keeps alive. Kernels work on `pointer` directly; the
/// memory never moves, so it may be handed to BLAS or to nonblocking MPI calls.
public final class Tensor: @unchecked Sendable {
    /// The extent of each dimension, outermost first.
    public let shape: [Int]
    /// The number of elements (product of `shape`).
    public let count: Int
    /// The first element.
    public let pointer: UnsafeMutablePointer<Float>
    private let owner: Tensor?
    private let owns: Bool
    /// Bytes mapped with mmap from `mappedBase` (released with munmap), 0 for heap memory.
    private let mappedBytes: Int
    private let mappedBase: UnsafeMutableRawPointer?

    /// A zero-filled tensor of the given shape. One of at least `hugePageMinimum` bytes is
    /// mapped on transparent huge pages where the kernel offers them (weights and KV pools
    /// streamed every step: fewer TLB misses, and prefetching that runs on past 4 KiB).
    public init(zeros shape: [Int]) {
        precondition(shape.allSatisfy { $0 >= 0 }, "negative dimension in \(shape)")
        self.shape = shape
        self.count = shape.reduce(1, *)
        self.owner = nil
        self.owns = true
        let bytes = max(count, 1) * 4
        if bytes >= Self.hugePageMinimum, let (base, length, aligned) = Self.mapHuge(bytes) {
            self.pointer = aligned.bindMemory(to: Float.self, capacity: max(count, 1))
            self.mappedBase = base
            self.mappedBytes = length
            return
        }
        let raw = UnsafeMutableRawPointer.allocate(byteCount: bytes, alignment: 64)
        self.pointer = raw.bindMemory(to: Float.self, capacity: max(count, 1))
        self.pointer.initialize(repeating: 0, count: max(count, 1))
        self.mappedBase = nil
        self.mappedBytes = 0
    }

    /// Tensors from this size up are mapped on huge pages.
    static let hugePageMinimum = 2 << 20
    static let hugePage = 2 << 20

    /// An anonymous zero mapping of `bytes` whose start is aligned to a huge page, advised to
    /// use huge pages: (mapping, its length, aligned start), or nil when mmap fails.
    private static func mapHuge(_ bytes: Int) -> (UnsafeMutableRawPointer, Int, UnsafeMutableRawPointer)? {
        let length = bytes + hugePage
        guard let raw = mmap(nil, length, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0), raw != MAP_FAILED else { return nil }
        let address = Int(bitPattern: raw), aligned = (address + hugePage - 1) / hugePage * hugePage
        let start = UnsafeMutableRawPointer(bitPattern: aligned) ?? raw
        _ = madvise(start, bytes, MADV_HUGEPAGE)
        return (raw, length, start)
    }

    /// A zero tensor whose pages the kernel provides on first touch (anonymous mmap): a large
    /// pool costs resident memory only as it is used. Falls back to `init(zeros:)` if the
    /// mapping fails.
    public init(lazyZeros shape: [Int]) {
        precondition(shape.allSatisfy { $0 >= 0 }, "negative dimension in \(shape)")
        let count = shape.reduce(1, *)
        let bytes = max(count, 1) * 4
        let raw = mmap(nil, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0)
        self.shape = shape
        self.count = count
        self.owner = nil
        self.owns = true
        if let raw, raw != MAP_FAILED {
            self.pointer = raw.bindMemory(to: Float.self, capacity: max(count, 1))
            self.mappedBase = raw
            self.mappedBytes = bytes
        } else {
            let heap = UnsafeMutableRawPointer.allocate(byteCount: bytes, alignment: 64)
            self.pointer = heap.bindMemory(to: Float.self, capacity: max(count, 1))
            self.pointer.initialize(repeating: 0, count: max(count, 1))
            self.mappedBase = nil
            self.mappedBytes = 0
        }
    }

    /// Backs bytes `from..<from+count` of this tensor with memory now (Linux's
    /// MADV_POPULATE_WRITE, the range widened to whole pages) without changing its contents, so
    /// that first writes there take no page fault; false where the kernel cannot (before Linux
    /// 5.14) or the tensor is not an mmap of its own. Safe while other threads use the memory.
    @discardableResult
    public func populate(from: Int, count: Int) -> Bool {
        guard mappedBase != nil, count > 0, from >= 0, from + count <= self.count * 4 else { return false }
        let page = Int(sysconf(Int32(_SC_PAGESIZE)))
        let start = (Int(bitPattern: pointer) + from) / page * page, end = Int(bitPattern: pointer) + from + count
        guard let address = UnsafeMutableRawPointer(bitPattern: start) else { return false }
        return madvise(address, end - start, 23 /* MADV_POPULATE_WRITE */) == 0
    }

    /// A tensor holding a copy of `values`; `values.count` must equal the shape's product.
    public convenience init(shape: [Int], values: [Float]) {
        self.init(zeros: shape)
        precondition(values.count == count, "\(values.count) values for shape \(shape)")
        values.withUnsafeBufferPointer { src in
            if let base = src.baseAddress { pointer.update(from: base, count: count) }
        }
    }

    private init(viewOf base: Tensor, offset: Int, shape: [Int]) {
        self.shape = shape
        self.count = shape.reduce(1, *)
        precondition(offset >= 0 && offset + count <= base.count,
                     "view [\(offset), \(offset + count)) outside tensor of \(base.count) elements")
        self.pointer = base.pointer + offset
        self.owner = base.owner ?? base
        self.owns = false
        self.mappedBase = nil
        self.mappedBytes = 0
    }

    deinit {
        guard owns else { return }
        if let mappedBase { munmap(mappedBase, mappedBytes) } else { UnsafeMutableRawPointer(pointer).deallocate() }
    }

    /// A view of `shape.product` elements starting at element `offset`; shares memory.
    public func view(offset: Int = 0, shape: [Int]) -> Tensor {
        Tensor(viewOf: self, offset: offset, shape: shape)
    }

    /// The same memory seen with another shape of the same element count.
    public func reshaped(_ shape: [Int]) -> Tensor {
        precondition(shape.reduce(1, *) == count, "cannot reshape \(self.shape) to \(shape)")
        return view(offset: 0, shape: shape)
    }

    /// A new one-dimensional tensor holding the values of `parts` back to back (a send buffer
    /// of several tensors).
    public static func concatenating(_ parts: [Tensor]) -> Tensor {
        let t = Tensor(zeros: [parts.reduce(0) { $0 + $1.count }])
        var offset = 0
        for p in parts {
            (t.pointer + offset).update(from: p.pointer, count: p.count)
            offset += p.count
        }
        return t
    }

    /// A new tensor with a copy of the elements.
    public func copy() -> Tensor {
        let t = Tensor(zeros: shape)
        t.pointer.update(from: pointer, count: count)
        return t
    }

    /// The elements as an array.
    public var array: [Float] { Array(UnsafeBufferPointer(start: pointer, count: count)) }

    /// The elements as a buffer pointer (valid while the tensor lives).
    public var buffer: UnsafeMutableBufferPointer<Float> {
        UnsafeMutableBufferPointer(start: pointer, count: count)
    }

    /// Element `i` of the flattened tensor.
    public subscript(i: Int) -> Float {
        get { pointer[i] }
        set { pointer[i] = newValue }
    }

    /// Sets every element to `value`.
    public func fill(_ value: Float) { pointer.update(repeating: value, count: count) }

    /// Copies all elements from a tensor of the same element count.
    public func copy(from other: Tensor) {
        precondition(other.count == count, "copy of \(other.count) elements into \(count)")
        pointer.update(from: other.pointer, count: count)
    }
}

extension Tensor: CustomStringConvertible {
    public var description: String { "Tensor(\(shape))" }
}
