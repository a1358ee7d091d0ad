import Logging
import Threads

/// The commit timer of docs/format.md, section 7: a background thread that
/// commits at most `interval` seconds after the pool becomes dirty, so
/// writes a consumer never flushes become durable and the blocks they
/// overwrote are reclaimed.
final class CommitTimer: Sendable {
    private struct State {
        var stopping = false
        var running = false
        /// Set by `commitSoon`: commit now rather than at the interval.
        var hurried = false
    }

    private enum Wake {
        case stop, poll, hurry
    }

    /// The pool, weakly: an abandoned pool is not kept alive by its timer.
    private final class PoolReference: Sendable {
        weak let pool: Pool?
        init(_ pool: Pool) { self.pool = pool }
    }

    let interval: Double
    private let state = Guarded(State())
    private let logger = Logger(label: "bulkhead.commit-timer")

    init(interval: Double) {
        self.interval = interval
    }

    /// Whether the thread is still running (it clears this as it exits).
    var isRunning: Bool { state.withLock { $0.running } }

    /// Starts the thread for `pool`.
    func start(for pool: Pool) {
        state.withLock { $0.running = true }
        let reference = PoolReference(pool)
        startThread { [self] in
            run(reference)
            state.update { $0.running = false }
        }
    }

    /// Asks the thread to stop without waiting (from the pool's deinit).
    func requestStop() {
        state.update { $0.stopping = true }
    }

    /// Asks for a commit now: the uncommitted records reached their bound,
    /// so neither they nor the commit that writes them grow with the rate
    /// of writes over a whole interval.
    func commitSoon() {
        state.update { $0.hurried = true }
    }

    /// Stops the thread and waits until it has exited; a commit it is
    /// running is finished first.
    func stop() {
        requestStop()
        _ = state.wait(until: { !$0.running }) { _ in () }
    }

    /// Polls five times per interval. A pool first seen dirty at a poll may
    /// have become dirty up to one poll earlier, so the commit comes at
    /// most `interval` after the first write (plus the commit's own time).
    /// A hurried commit comes at once, unless the last commit failed less
    /// than an interval ago.
    private func run(_ reference: PoolReference) {
        let poll = interval / 5
        var dirtySince: Double?
        var failedAt: Double?
        while true {
            let wake = state.wait(until: { $0.stopping || $0.hurried }, timeout: poll) { state -> Wake in
                if state.stopping { return .stop }
                state.hurried = false
                return .hurry
            } ?? .poll
            guard wake != .stop, let pool = reference.pool else { return }
            guard pool.isDirty, !pool.hasFailed else {
                dirtySince = nil
                continue
            }
            let now = monotonicSeconds()
            let since = dirtySince ?? now - poll
            dirtySince = since
            let hurried = wake == .hurry && (failedAt.map { now - $0 >= interval } ?? true)
            guard hurried || now - since >= interval - poll / 2 else { continue }
            do throws(PoolError) {
                try pool.flush()
                dirtySince = nil
                failedAt = nil
            } catch {
                // Tried again a whole interval later, not at every poll.
                logger.error("timed commit failed: \(error)")
                dirtySince = now
                failedAt = now
            }
        }
    }
}

extension Pool {
    /// Whether anything is uncommitted: a commit would write or free something.
    var isDirty: Bool {
        state.withLock { !$0.pending.isEmpty || !$0.releaseAfterCommit.isEmpty || $0.unsyncedSuperblock != nil }
    }

    /// Starts the commit timer unless it is disabled; after format and open.
    func startCommitTimer() {
        commitTimer?.start(for: self)
    }
}
