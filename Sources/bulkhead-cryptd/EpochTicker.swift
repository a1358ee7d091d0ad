import CryptPool
import Logging
import Threads

/// Advances the pool's anchor epoch while it is served, at most once per
/// `interval` seconds and only when something was committed since the last
/// advance, so an idle pool does not wear the TPM's NV memory.
final class EpochTicker: Sendable {
    let pool: Pool
    let interval: Double
    let logger: Logger
    private let state = Guarded((stopping: false, running: false))

    init(pool: Pool, interval: Double, logger: Logger) {
        self.pool = pool
        self.interval = interval
        self.logger = logger
    }

    func start() {
        state.update { $0.running = true }
        startThread { [self] in
            var lastGeneration = pool.generation
            while true {
                let stopping = state.wait(until: { $0.stopping }, timeout: interval) { $0.stopping } ?? false
                if stopping { break }
                let generation = pool.generation
                guard generation != lastGeneration else { continue }
                do {
                    try pool.advanceAnchorEpoch()
                    logger.info("anchor epoch advanced", metadata: ["epoch": "\(pool.anchorEpoch)"])
                } catch {
                    logger.error("cannot advance the anchor epoch: \(error)")
                }
                lastGeneration = pool.generation
            }
            state.update { $0.running = false }
        }
    }

    /// Stops the ticker and waits for an advance in progress to end.
    func stop() {
        state.update { $0.stopping = true }
        _ = state.wait(until: { !$0.running }) { _ in true }
    }
}
