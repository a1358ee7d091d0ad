#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif
import Logging
import Threads

/// The commit timer of docs/format.md, section 7: a background thread that
/// commits at most `interval` seconds after the pool becomes dirty, so
/// writes a consumer never flushes become durable and the blocks they
/// overwrote are reclaimed.
///
/// The timer does not keep its pool alive: the pool owns the timer, and the
/// thread reaches the pool through an unretained pointer that the pool's
/// deinit withdraws (`detach`). A weak reference would do the same, but it
/// gives the pool a side table, which sends every retain and release of the
/// pool on the data path down the runtime's slow path.
final class CommitTimer: Sendable {
    private struct State {
        var stopping = false
        var running = false
        /// Set by `commitSoon`: commit now rather than at the interval.
        var hurried = false
        /// The pool, unretained: set by `start`, withdrawn by `detach` from
        /// the pool's deinit.
        var pool: Unmanaged<Pool>?
        /// The timer thread, from taking `pool` until it has released it.
        var user: pthread_t?
    }

    private enum Wake {
        case stop, poll, hurry
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
        state.withLock { state in
            state.pool = Unmanaged.passUnretained(pool)
            state.running = true
        }
        startThread { [self] in
            run()
            state.update { $0.running = false }
        }
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
        state.update { $0.stopping = true }
        _ = state.wait(until: { !$0.running }) { _ in () }
    }

    // SAFETY: the protocol that lets the thread use the pool through the
    // unretained `State.pool`, with neither a weak reference nor a strong
    // one that would keep an abandoned pool alive. Both halves below run
    // their checks and changes of `pool` and `user` under `state`'s lock.
    //
    // 1. `pool` is set by `start` from a live pool and withdrawn by `detach`,
    //    which the pool's deinit calls first. Until `detach` returns, the
    //    pool's memory and stored properties are intact: Swift destroys
    //    them only after deinit's body.
    // 2. The thread takes `pool` and sets `user` to itself in one critical
    //    section, and clears `user` only after its last use of the pool
    //    (`withPool`). `detach` withdraws `pool` only in a critical section
    //    where `user` is nil or the calling thread (3.), so a deinit on
    //    another thread waits until the thread is done: the thread never
    //    touches a freed pool, and never takes it again once `detach` ran.
    // 3. The thread retains the pool while it uses it. If the last other
    //    reference goes meanwhile, the thread's release is the last: the
    //    deinit runs on the thread, inside that release, with `user` still
    //    set. `detach` then finds `user` to be the calling thread and does
    //    not wait (it would wait for itself); the use is over, and after the
    //    release the thread touches only this timer, which its closure
    //    retains. Since the thread holds a reference throughout the use, no
    //    release inside it (in the commit) can be the last one.
    // 4. The last other reference may go after the thread took `pool` but
    //    before its retain: the pool's deinit has then begun and waits in
    //    `detach`. The runtime lets an object be retained during its deinit
    //    (as code called from a deinit retains self), provided every such
    //    reference is released before deinit returns; the thread releases
    //    before clearing `user`, and deinit returns only after. The commit
    //    run meanwhile leaves no reference to the pool behind when it
    //    returns (Commit, Checkpoint and PoolIO hand the pool to no escaping
    //    closure or other thread).
    //
    // Consequences: a pool dropped while its timer commits usually lives
    // on until the commit ends and is freed on the timer's thread (3.); one
    // dropped in the moment between the take and the retain waits in its
    // deinit for the commit (4.), so the last reference must not be dropped
    // on a thread that commit waits for (a storage device's completion
    // thread). Owners close their pools (`Pool.close`); only crash tests
    // abandon them.

    /// Runs `body` with the pool, retained; false, without running it, once
    /// the timer stops or the pool is gone.
    private func withPool(_ body: (Pool) -> Void) -> Bool {
        let me = pthread_self()
        let taken = state.withLock { state -> Unmanaged<Pool>? in
            guard !state.stopping, let pool = state.pool else { return nil }
            state.user = me
            return pool
        }
        guard let taken else { return false }
        let retained = taken.retain()
        body(retained.takeUnretainedValue())
        // Possibly the last reference: the pool's deinit may run here.
        retained.release()
        state.update { $0.user = nil }
        return true
    }

    /// Withdraws the pool from the thread and stops it; the pool's deinit
    /// calls this first. Waits while the thread uses the pool, unless this
    /// deinit runs on that thread, in its release (see SAFETY above).
    func detach() {
        let me = pthread_self()
        _ = state.wait(until: { state in state.user.map { pthread_equal($0, me) != 0 } ?? true }) { state in
            state.pool = nil
        }
        state.update { $0.stopping = true }
    }

    /// Polls five times per interval. A pool first seen dirty at a poll may
    /// have become dirty up to one poll earlier, so the commit comes at
    /// most `interval` after the first write (plus the commit's own time).
    /// A hurried commit comes at once, unless the last commit failed less
    /// than an interval ago.
    private func run() {
        let poll = interval / 5
        var dirtySince: Double?
        var failedAt: Double?
        while true {
            let wake = state.wait(until: { $0.stopping || $0.hurried }, timeout: poll) { state -> Wake in
                if state.stopping { return .stop }
                state.hurried = false
                return .hurry
            } ?? .poll
            guard wake != .stop else { return }
            let used = withPool { pool in
                guard pool.isDirty, !pool.hasFailed else {
                    dirtySince = nil
                    return
                }
                let now = monotonicSeconds()
                let since = dirtySince ?? now - poll
                dirtySince = since
                let hurried = wake == .hurry && (failedAt.map { now - $0 >= interval } ?? true)
                guard hurried || now - since >= interval - poll / 2 else { return }
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
            guard used else { return }
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
