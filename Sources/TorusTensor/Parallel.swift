/// Splits independent work items across this rank's thread budget (its BLAS thread count).
/// BLAS runs single-threaded inside the region so the two levels do not oversubscribe.
public enum Parallel {
    /// Runs `body(i)` for every `i` in `0..<count`, items spread over up to `BLAS.threads`
    /// threads (`WorkerPool`'s). `body` must only write memory no other item writes.
    public static func forEach(_ count: Int, _ body: (Int) -> Void) {
        let budget = min(BLAS.threads, count)
        if budget <= 1 {
            for i in 0..<count { body(i) }
            return
        }
        let saved = BLAS.threads
        BLAS.threads = 1
        defer { BLAS.threads = saved }
        // Another region running (another thread's, or this one nested): the items run here.
        if WorkerPool.shared.run(count, threads: budget, body) { return }
        for i in 0..<count { body(i) }
    }
}
