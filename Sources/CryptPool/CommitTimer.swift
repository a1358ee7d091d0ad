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

    /// Stops the thread and waits until it has exited; a commit it is
    /// running is finished first.
    func stop() {
        requestStop()
        _ = state.wait(until: { !$0.running }) { _ in () }
    }

    /// Polls five times per interval. A pool first seen dirty at a poll may
    /// have become dirty up to one poll earlier, so the commit comes at
    /// most `interval` after the first write (plus the commit's own time).
    private func run(_ reference: PoolReference) {
        let poll = interval / 5
        var dirtySince: Double?
        while true {
            let stopping = state.wait(until: { $0.stopping }, timeout: poll) { _ in true } ?? false
            guard !stopping, let pool = reference.pool else { return }
            guard pool.isDirty, !pool.hasFailed else {
                dirtySince = nil
                continue
            }
            let now = monotonicSeconds()
            let since = dirtySince ?? now - poll
            dirtySince = since
            guard now - since >= interval - poll / 2 else { continue }
            do throws(PoolError) {
                try pool.flush()
                dirtySince = nil
            } catch {
                // Tried again a whole interval later, not at every poll.
                logger.error("timed commit failed: \(error)")
                dirtySince = now
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
