/// Head layout of one attention call: queries have `queryHeads` heads, keys and values
/// `keyValueHeads` heads (grouped-query attention when fewer), each of `headDim` numbers.
/// Rows are tokens; a row of Q holds all its heads contiguously (`[tokens, heads, headDim]`).
public struct AttentionShape: Sendable, Equatable {
    public var queryHeads: Int
    public var keyValueHeads: Int
    public var headDim: Int

    public init(queryHeads: Int, keyValueHeads: Int, headDim: Int) {
        precondition(queryHeads > 0 && keyValueHeads > 0 && headDim > 0, "attention dimensions must be positive")
        precondition(queryHeads % keyValueHeads == 0,
                     "query heads (\(queryHeads)) must be a multiple of key/value heads (\(keyValueHeads))")
        self.queryHeads = queryHeads
        self.keyValueHeads = keyValueHeads
        self.headDim = headDim
    }

    /// Floats per query (or output) row.
    public var queryWidth: Int { queryHeads * headDim }
    /// Floats per key (or value) row.
    public var keyValueWidth: Int { keyValueHeads * headDim }
    /// Query heads sharing one key/value head.
    public var groupSize: Int { queryHeads / keyValueHeads }
    /// The softmax scale 1/sqrt(headDim).
    public var scale: Float { 1 / Float(headDim).squareRoot() }
}

/// Where one block of queries and one block of keys sit in the full sequence, for causal
/// masking: query row i has position `queryOffset + i`, key row j `keyOffset + j`, and a key
/// is visible when `causal` is false or its position is not after the query's.
public struct AttentionMask: Sendable, Equatable {
    public var causal: Bool
    public var queryOffset: Int
    public var keyOffset: Int

    public init(causal: Bool, queryOffset: Int = 0, keyOffset: Int = 0) {
        self.causal = causal
        self.queryOffset = queryOffset
        self.keyOffset = keyOffset
    }

    /// The number of leading keys (of `keyCount`) visible to query row `row`.
    @inline(__always)
    public func visibleKeys(row: Int, keyCount: Int) -> Int {
        guard causal else { return keyCount }
        return min(keyCount, max(0, queryOffset + row - keyOffset + 1))
    }
}
