import Foundation

/// The token ids of recently seen request documents, so a document sent again (the point of
/// chunk reuse) is not tokenized again. Bounded by a count of entries and of cached tokens;
/// the oldest entries go first. Thread-safe.
public final class DocumentTokenCache: @unchecked Sendable {
    private let lock = NSLock()
    private var entries: [String: [Int32]] = [:]
    private var order: [String] = []
    private var head = 0
    private var tokens = 0
    public let maxEntries: Int
    public let maxTokens: Int

    public init(maxEntries: Int = 4096, maxTokens: Int = 4 << 20) {
        self.maxEntries = maxEntries
        self.maxTokens = maxTokens
    }

    /// The ids of `text`, from the cache or from `encode` (then cached).
    public func tokens(of text: String, encode: (String) -> [Int32]) -> [Int32] {
        lock.lock()
        if let ids = entries[text] { lock.unlock(); return ids }
        lock.unlock()
        let ids = encode(text)
        guard ids.count <= maxTokens else { return ids }
        lock.lock()
        defer { lock.unlock() }
        guard entries.updateValue(ids, forKey: text) == nil else { return ids }
        order.append(text)
        tokens += ids.count
        while entries.count > maxEntries || tokens > maxTokens, head < order.count {
            if let old = entries.removeValue(forKey: order[head]) { tokens -= old.count }
            head += 1
        }
        if head > 1024 && head * 2 > order.count {
            order.removeFirst(head)
            head = 0
        }
        return ids
    }

    /// Entries held now.
    public var count: Int { lock.lock(); defer { lock.unlock() }; return entries.count }
}
