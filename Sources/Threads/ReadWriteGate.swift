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
/// it atomically, so multi-block requests never deadlock. Each key's held
/// ranges are kept apart, so a request scans only those of its own volume:
/// eight volumes at queue depth 32 each would otherwise scan 256 ranges
/// under the one lock, per request and again per release.
public final class RangeLocks: Sendable {
    /// What `tryLock` returns and `unlock` takes back.
    public struct Ticket: Sendable, Hashable {
        fileprivate var key: UInt32
        fileprivate var serial: UInt64
    }

    fileprivate struct Held {
        var range: Range<UInt64>
        var serial: UInt64
    }

    private struct State {
        var held: [UInt32: [Held]] = [:]
        var nextSerial: UInt64 = 0

        func isFree(_ key: UInt32, _ range: Range<UInt64>) -> Bool {
            !(held[key]?.contains { $0.range.overlaps(range) } ?? false)
        }

        mutating func take(_ key: UInt32, _ range: Range<UInt64>) -> Ticket {
            nextSerial += 1
            held[key, default: []].append(Held(range: range, serial: nextSerial))
            return Ticket(key: key, serial: nextSerial)
        }
    }

    private let state = Guarded(State())

    public init() {}

    public func withLock<T, E: Error>(key: UInt32, range: Range<UInt64>, _ body: () throws(E) -> T) throws(E) -> T {
        let ticket = state.wait(until: { $0.isFree(key, range) }, then: { $0.take(key, range) })!
        defer { unlock(ticket) }
        return try body()
    }

    /// Holds `range` if no held range of `key` overlaps it; returns the
    /// ticket to pass to `unlock`, or nil. For holders that finish on
    /// another thread.
    public func tryLock(key: UInt32, range: Range<UInt64>) -> Ticket? {
        state.withLock { state -> Ticket? in state.isFree(key, range) ? state.take(key, range) : nil }
    }

    /// Releases what `tryLock` (or `withLock`) took.
    public func unlock(_ ticket: Ticket) {
        // The key's entry stays (emptied, with its capacity) for its next holder.
        state.update { $0.held[ticket.key, default: []].release(ticket.serial) }
    }
}

extension [RangeLocks.Held] {
    /// Removes the range held under `serial`; order does not matter.
    fileprivate mutating func release(_ serial: UInt64) {
        guard let index = firstIndex(where: { $0.serial == serial }) else { return }
        swapAt(index, count - 1)
        removeLast()
    }
}
