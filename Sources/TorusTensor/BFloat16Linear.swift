import CTorusKernels
import Foundation

/// The weights of one dense layer (`y = x W^T`, `W` of shape [out, in]) rounded to bfloat16
/// and packed for inference: products of bfloat16 activations and weights, summed in fp32
/// (vLLM's `--dtype bfloat16`). With AVX512-BF16 twice the multiply rate of fp32 and half the
/// weight bytes; on other CPUs a portable kernel computes the same products. The packed copy
/// does not follow later changes of the fp32 weights.
public final class BFloat16Linear: @unchecked Sendable {
    /// Input features (columns of `W`).
    public let inFeatures: Int
    /// Output features (rows of `W`).
    public let outFeatures: Int
    /// Up to this many rows, `forward` runs on the calling thread alone (TORUS_BF16_SERIAL_ROWS;
    /// default 0: every product is split over the threads). With workers woken by the OS for
    /// each of a decoding step's ~60 products, 8 was better; `WorkerPool` keeps them awake
    /// through a step, and splitting pays from 1 row on (Zen 4, 2 cores, `bench linear
    /// --in-features 512 --out-features 1376`: 150-181 against 98-103 GFLOP/s at 8 rows, 24-29
    /// against 20-23 GB/s of weights at 1 row).
    public static let serialRows: Int = {
        if let v = ProcessInfo.processInfo.environment["TORUS_BF16_SERIAL_ROWS"].flatMap({ Int($0) }), v >= 0 { return v }
        return 0
    }()
    /// Whether the kernels run AVX512-BF16 code (else the portable kernel: a CPU without it, or
    /// TORUS_BF16_KERNEL=portable).
    public static let accelerated = torus_bf16_kernel_accelerated() != 0
    private let packed: UnsafeMutablePointer<UInt16>
    private let packedCount: Int
    /// The memory `packed` lies in (a model's shared arena, or this layer's own), kept alive.
    private let arena: Tensor

    /// Elements (bfloat16) of a packed [outFeatures, inFeatures] matrix.
    public static func packedCount(outFeatures: Int, inFeatures: Int) -> Int { torus_bf16_packed_count(outFeatures, inFeatures) }

    /// Rounds and packs `weight` [outFeatures, inFeatures] into memory of its own.
    public convenience init(weight: UnsafePointer<Float>, outFeatures: Int, inFeatures: Int) {
        let count = Self.packedCount(outFeatures: outFeatures, inFeatures: inFeatures)
        self.init(weight: weight, outFeatures: outFeatures, inFeatures: inFeatures, arena: Tensor(zeros: [(count + 1) / 2]), offset: 0)
    }

    /// Rounds and packs `weight` into `arena` from bfloat16 element `offset` on (the arena is
    /// kept alive; one arena for a model's layers puts them all on huge pages, which the
    /// hardware prefetcher streams past 4 KiB).
    public init(weight: UnsafePointer<Float>, outFeatures: Int, inFeatures: Int, arena: Tensor, offset: Int) {
        precondition(outFeatures > 0 && inFeatures > 0, "a linear layer needs positive shapes, got [\(outFeatures), \(inFeatures)]")
        self.inFeatures = inFeatures
        self.outFeatures = outFeatures
        packedCount = Self.packedCount(outFeatures: outFeatures, inFeatures: inFeatures)
        precondition(offset >= 0 && offset + packedCount <= arena.count * 2, "the arena of \(arena.count * 2) bfloat16 values cannot hold [\(outFeatures), \(inFeatures)] at \(offset)")
        self.arena = arena
        packed = UnsafeMutableRawPointer(arena.pointer).bindMemory(to: UInt16.self, capacity: arena.count * 2) + offset
        torus_bf16_pack(weight, outFeatures, inFeatures, packed)
    }

    /// `x` rounded to the nearest bfloat16 (ties to even), as the kernels round.
    public static func rounded(_ x: Float) -> Float {
        Float(bitPattern: UInt32(torus_bf16_round(x)) << 16)
    }

    /// Bytes of the packed weights.
    public var bytes: Int { packedCount * 2 }

    /// `y[rows, out] = bf16(x)[rows, in] bf16(W)^T` (or `+=` when `accumulate`), the output
    /// features split over this rank's threads.
    public func forward(x: UnsafePointer<Float>, y: UnsafeMutablePointer<Float>, rows: Int, accumulate: Bool = false) {
        Self.forward([(self, y)], x: x, rows: rows, accumulate: accumulate)
    }

    /// `y_i = bf16(x) bf16(W_i)^T` (or `+=`) for layers that read the same input (Q, K and V;
    /// gate and up): `x` rounded once, and every layer's output features in one parallel region.
    public static func forward(_ layers: [(layer: BFloat16Linear, y: UnsafeMutablePointer<Float>)], x: UnsafePointer<Float>, rows: Int,
                               accumulate: Bool = false) {
        guard rows > 0, let inFeatures = layers.first?.layer.inFeatures else { return }
        precondition(layers.allSatisfy { $0.layer.inFeatures == inFeatures }, "layers of one input need the same input features")
        let stride = 2 * ((inFeatures + 1) / 2)
        withUnsafeTemporaryAllocation(of: UInt16.self, capacity: rows * stride) { xb in
            guard let xb = xb.baseAddress else { return }
            let threads = BLAS.threads
            // Rounding the activations: by rows over the threads when there are many.
            let rowParts = rows >= 64 ? threads : 1
            let rowsPer = (rows + rowParts - 1) / rowParts
            Parallel.forEach(rowParts) { p in
                let begin = p * rowsPer, end = min(rows, begin + rowsPer)
                guard begin < end else { return }
                torus_bf16_rows(x + begin * inFeatures, xb + begin * stride, end - begin, inFeatures)
            }
            // Each layer's pairs of 16-output panels (the kernel's tile) split over the threads;
            // the items of all layers claimed in turn.
            var items: [(layer: Int, begin: Int, end: Int)] = []
            for (i, l) in layers.enumerated() {
                let panels = (l.layer.outFeatures + 15) / 16
                let parts = rows <= serialRows ? 1 : max(1, min(threads, panels / 2))
                let per = ((panels + parts - 1) / parts + 1) / 2 * 2
                for p in 0..<parts where p * per < panels { items.append((i, p * per, min(panels, (p + 1) * per))) }
            }
            func run(_ t: Int) {
                let item = items[t], l = layers[item.layer]
                torus_linear_bf16(xb, l.layer.packed, l.y, rows, inFeatures, l.layer.outFeatures, item.begin, item.end, accumulate ? 1 : 0)
            }
            if rows <= serialRows { for t in items.indices { run(t) } } else { Parallel.forEach(items.count, run) }
        }
    }
}
