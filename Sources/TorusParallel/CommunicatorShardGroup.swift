import TorusComm
import TorusModel
import TorusTensor

/// The ranks of a communicator as a `ShardGroup` for sharded decoding.
public final class CommunicatorShardGroup: ShardGroup {
    public let comm: Communicator
    public init(comm: Communicator) { self.comm = comm }
    public var rank: Int { comm.rank }
    public var size: Int { comm.size }

    public func allGather(_ values: [Float]) throws -> [[Float]] {
        let input = Tensor(shape: [values.count], values: values)
        let output = Tensor(zeros: [values.count * comm.size])
        try comm.allGather(input, into: output)
        let all = output.array
        return (0..<comm.size).map { Array(all[($0 * values.count)..<(($0 + 1) * values.count)]) }
    }
}

/// Generation with the prompt split over the ranks of `comm`: sequence-parallel prefill leaves
/// each rank the KV cache of its chunks; each decoding step merges every rank's partial
/// attention. The last rank stores the new tokens' keys and values. Every rank returns the
/// same tokens.
public enum ShardedGeneration {
    public static func generate(model: LlamaModel, prompt: [Int32], maxNewTokens: Int, options: SamplingOptions,
                                comm: Communicator, method: SequenceParallelMethod, layout kind: SequenceLayoutKind,
                                stopToken: Int32? = nil, onToken: ((Int32) -> Void)? = nil) throws -> [Int32] {
        let layout = try SequenceLayout(kind: kind, ranks: comm.size, length: prompt.count)
        guard prompt.count + maxNewTokens <= model.config.maxPositionEmbeddings else {
            throw ModelInputError.sequenceTooLong(length: prompt.count + maxNewTokens, limit: model.config.maxPositionEmbeddings)
        }
        let attention = try method.make(comm: comm, layout: layout, shape: model.config.attentionShape, causal: true)
        let group = CommunicatorShardGroup(comm: comm)
        let local = layout.positions(rank: comm.rank).map { prompt[$0] }
        let cache = ShardedKVCache(config: model.config, capacity: layout.localCount + maxNewTokens)
        var logits = try model.prefillSharded(localTokens: local, attention: attention, cache: cache, group: group)
        var sampler = Sampler(options: options)
        var out: [Int32] = []
        while out.count < maxNewTokens {
            let next = logits.withUnsafeBufferPointer { sampler.next(logits: $0.baseAddress!, vocab: model.config.vocabSize) }
            out.append(next)
            onToken?(next)
            if next == stopToken || out.count == maxNewTokens { break }
            logits = try model.decodeSharded(token: next, position: prompt.count + out.count - 1, cache: cache, group: group,
                                             appendHere: comm.rank == comm.size - 1)
        }
        return out
    }
}
