import Foundation
import ServiceLifecycle
import TorusServe

/// On graceful shutdown (SIGTERM/SIGINT), gives open requests `grace` seconds, then aborts
/// what is left so that their streams end and the server can exit.
struct EngineShutdown: Service {
    let engine: Engine
    let grace: Double

    func run() async throws {
        try? await gracefulShutdown()
        let deadline = Date().addingTimeInterval(grace)
        while Date() < deadline, engine.currentStats.running + engine.currentStats.waiting > 0 {
            try? await Task.sleep(nanoseconds: 50_000_000)
        }
        engine.abortAll()
    }
}
