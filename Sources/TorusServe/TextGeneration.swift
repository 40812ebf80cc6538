import Foundation
import TorusModel

/// What a text generation reports, in order.
public enum TextEvent: Sendable {
    /// New text (possibly empty while a character or a possible stop string is held back) and
    /// the tokens chosen since the last event, with their log-probabilities when asked for;
    /// `finish` is set on the generation's last delta.
    case delta(text: String, tokens: [Int32], logprobs: [TokenLogprobs], finish: FinishReason?)
    case finished(FinishReason, GenerationTimings)
    case failed(String)
}

/// One generation as text: runs a request on the engine, turns its tokens into text with the
/// tokenizer, and ends it at the first stop string (which is not part of the output).
public final class TextGeneration: @unchecked Sendable {
    public let id: Int
    public let events: AsyncStream<TextEvent>
    private let engine: Engine

    private init(id: Int, events: AsyncStream<TextEvent>, engine: Engine) {
        self.id = id
        self.events = events
        self.engine = engine
    }

    /// Submits `request`; throws what `Engine.submit` throws. Cancelling the task that reads
    /// `events` (a client that went away) aborts the request and frees its blocks.
    public static func start(engine: Engine, request: GenerationRequest, tokenizer: any TextTokenizer,
                             stop: [String] = []) throws -> TextGeneration {
        let (stream, continuation) = AsyncStream<TextEvent>.makeStream(bufferingPolicy: .unbounded)
        let state = StopState(tokenizer: tokenizer, prompt: request.prompt, stop: stop.filter { !$0.isEmpty })
        let id = try engine.submit(request) { [weak engine] event in
            for e in state.handle(event) {
                continuation.yield(e)
                switch e {
                case .finished, .failed: continuation.finish()
                case .delta: break
                }
            }
            if state.stoppedByString, !state.abortSent {
                state.abortSent = true
                if let id = state.engineID { engine?.abort(id) }
            }
        }
        state.setID(id)
        continuation.onTermination = { [weak engine] termination in
            if case .cancelled = termination { engine?.abort(id) }
        }
        return TextGeneration(id: id, events: stream, engine: engine)
    }

    /// Ends the generation early.
    public func cancel() { engine.abort(id) }
}

/// Detokenization and stop strings of one generation (touched by the engine thread only,
/// apart from the id set once after submission).
final class StopState: @unchecked Sendable {
    private var detokenizer: IncrementalDetokenizer
    private let stop: [String]
    private let holdBack: Int
    /// Text not sent yet. A stop string can only start here: what was sent ended with no
    /// partial match, so the sent text is not kept (the work per token does not grow).
    private var unsent = ""
    private var pendingTokens: [Int32] = []
    private var pendingLogprobs: [TokenLogprobs] = []
    private(set) var stoppedByString = false
    var abortSent = false
    private var done = false
    private var finishSent = false
    private let idLock = NSLock()
    private var id: Int?

    init(tokenizer: any TextTokenizer, prompt: [Int32], stop: [String]) {
        detokenizer = IncrementalDetokenizer(tokenizer: tokenizer, context: prompt)
        self.stop = stop
        holdBack = max(0, (stop.map { $0.unicodeScalars.count }.max() ?? 0) - 1)
    }

    func setID(_ id: Int) { idLock.lock(); self.id = id; idLock.unlock() }
    var engineID: Int? { idLock.lock(); defer { idLock.unlock() }; return id }

    func handle(_ event: GenerationEvent) -> [TextEvent] {
        guard !done else { return [] }
        switch event {
        case let .token(token, info, finishing):
            guard !stoppedByString else { return [] }
            pendingTokens.append(token)
            if let info { pendingLogprobs.append(info) }
            let piece = detokenizer.push(token)
            unsent += piece
            if !stop.isEmpty, !piece.isEmpty, cutAtStop() {
                stoppedByString = true
                return [flushDelta(all: true, finish: .stop)]
            }
            if let finishing {
                unsent += detokenizer.flush()
                if !stop.isEmpty, cutAtStop() {
                    stoppedByString = true
                    return [flushDelta(all: true, finish: .stop)]
                }
                finishSent = true
                return [flushDelta(all: true, finish: finishing)]
            }
            return [flushDelta(all: false, finish: nil)]
        case let .finished(reason, timings):
            done = true
            let final: FinishReason = stoppedByString ? .stop : reason
            guard !stoppedByString && !finishSent else { return [.finished(final, timings)] }
            // An abort: whatever is held back goes out with the finish reason.
            unsent += detokenizer.flush()
            return [flushDelta(all: true, finish: final), .finished(final, timings)]
        case let .failed(message):
            done = true
            return [.failed(message)]
        }
    }

    /// Cuts the unsent text before the first stop string in it; true when one was found.
    private func cutAtStop() -> Bool {
        var best: String.Index?
        for s in stop {
            if let r = unsent.range(of: s), best.map({ r.lowerBound < $0 }) ?? true { best = r.lowerBound }
        }
        guard let cut = best else { return false }
        unsent = String(unsent[..<cut])
        return true
    }

    /// Scalars at the end of the text that begin some stop string (held back until the next
    /// token shows whether the stop string completes), as llama.cpp's server does.
    private func partialStopLength() -> Int {
        guard holdBack > 0 else { return 0 }
        let tail = Array(unsent.unicodeScalars.suffix(holdBack))
        for length in stride(from: tail.count, to: 0, by: -1) {
            let suffix = tail[(tail.count - length)...]
            if stop.contains(where: { $0.unicodeScalars.starts(with: suffix) }) { return length }
        }
        return 0
    }

    private func flushDelta(all: Bool, finish: FinishReason?) -> TextEvent {
        let keep = all ? 0 : partialStopLength()
        let scalars = unsent.unicodeScalars
        let split = scalars.index(scalars.endIndex, offsetBy: -keep)
        let piece = String(String.UnicodeScalarView(scalars[..<split]))
        unsent = String(String.UnicodeScalarView(scalars[split...]))
        defer { pendingTokens = []; pendingLogprobs = [] }
        return .delta(text: piece, tokens: pendingTokens, logprobs: pendingLogprobs, finish: finish)
    }
}
