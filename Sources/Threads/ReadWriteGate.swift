/// A writer-preferring shared/exclusive gate: many holders share it, one
/// holder excludes all others, and a waiting exclusive holder stops new
/// shared holders from starving it.
public final class ReadWriteGate: Sendable {
    private struct State {
        var shared = 0
        var exclusive = false
        var exclusiveWaiting = 0
    }

    private let state = Guarded(State())

    public init() {}

    public func withShared<T, E: Error>(_ body: () throws(E) -> T) throws(E) -> T {
        state.wait(until: { !$0.exclusive && $0.exclusiveWaiting == 0 }) { $0.shared += 1 }
        defer { state.update { $0.shared -= 1 } }
        return try body()
    }

    /// Takes a share if that needs no waiting; pair with `releaseShared()`.
    /// For holders that finish on another thread (an operation completed
    /// asynchronously).
    public func tryAcquireShared() -> Bool {
        state.withLock { state in
            guard !state.exclusive, state.exclusiveWaiting == 0 else { return false }
            state.shared += 1
            return true
        }
    }

    /// Gives back a share taken with `tryAcquireShared()`.
    public func releaseShared() {
        state.update { $0.shared -= 1 }
    }

    public func withExclusive<T, E: Error>(_ body: () throws(E) -> T) throws(E) -> T {
        state.update { $0.exclusiveWaiting += 1 }
        state.wait(until: { !$0.exclusive && $0.shared == 0 }) {
            $0.exclusiveWaiting -= 1
            $0.exclusive = true
        }
        defer { state.update { $0.exclusive = false } }
        return try body()
    }
}

/// Locks on ranges of a keyed space (a volume's logical blocks): a holder
/// waits until no held range of the same key overlaps its own, then holds
/// it atomically, so multi-block requests never deadlock.
public final class RangeLocks: Sendable {
    private struct Held: Hashable {
        var key: UInt32
        var range: Range<UInt64>
        var ticket: UInt64
    }

    private struct State {
        var held: [Held] = []
        var nextTicket: UInt64 = 0
    }

    private let state = Guarded(State())

    public init() {}

    public func withLock<T, E: Error>(key: UInt32, range: Range<UInt64>, _ body: () throws(E) -> T) throws(E) -> T {
        let ticket = state.wait(
            until: { state in !state.held.contains { $0.key == key && $0.range.overlaps(range) } },
            then: { state -> UInt64 in
                state.nextTicket += 1
                state.held.append(Held(key: key, range: range, ticket: state.nextTicket))
                return state.nextTicket
            })!
        defer { unlock(ticket) }
        return try body()
    }

    /// Holds `range` if no held range of `key` overlaps it; returns the
    /// ticket to pass to `unlock`, or nil. For holders that finish on
    /// another thread.
    public func tryLock(key: UInt32, range: Range<UInt64>) -> UInt64? {
        state.withLock { state -> UInt64? in
            guard !state.held.contains(where: { $0.key == key && $0.range.overlaps(range) }) else { return nil }
            state.nextTicket += 1
            state.held.append(Held(key: key, range: range, ticket: state.nextTicket))
            return state.nextTicket
        }
    }

    /// Releases what `tryLock` (or `withLock`) took.
    public func unlock(_ ticket: UInt64) {
        state.update { state in
            if let index = state.held.firstIndex(where: { $0.ticket == ticket }) { state.held.remove(at: index) }
        }
    }
}
