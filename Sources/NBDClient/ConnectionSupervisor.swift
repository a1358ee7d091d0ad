#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif
import Logging
import NBDProtocol
import Sockets
import Synchronization
import Threads

/// What must stay the same across reconnects for resent requests to mean
/// what they meant: a storage domain that comes back with a different
/// export has changed under us.
struct ExportIdentity: Sendable {
    var size: UInt64
    var isReadOnly: Bool
    var minimumBlockSize: UInt32
    /// The largest READ/WRITE the device splits requests into.
    var chunkSize: UInt32

    /// Why `connection` does not serve this export, or nil if it does.
    func mismatch(_ connection: NBDConnection) -> String? {
        if connection.size != size { return "size was \(size) bytes, now \(connection.size)" }
        let readOnly = connection.flags.contains(.readOnly)
        if readOnly != isReadOnly { return readOnly ? "it became read-only" : "it became writable" }
        let minimum = connection.blockSize?.minimum ?? 1
        if minimum != minimumBlockSize { return "minimum block size was \(minimumBlockSize), now \(minimum)" }
        if connection.maxPayload < chunkSize { return "maximum payload shrank below \(chunkSize) bytes" }
        return nil
    }
}

/// Keeps one usable connection to a restartable server. When the current
/// one dies, the threads that need a connection take turns reconnecting;
/// each caller gives up once its own deadline (the retry window) has
/// passed. Consecutive failures, whether a connection dying or a handshake
/// failing, back off exponentially, and only an answered request resets
/// the count: a server that accepts connections and then fails every
/// request is not hammered in a tight loop. A connect that nobody answers
/// (ECONNREFUSED, or no socket file) costs the server nothing, so it is
/// tried again every `initialBackoff` without growing the backoff: a server restarted
/// by its supervisor is found as soon as it listens, not a grown backoff
/// later, which under repeated crashes could be after it died again.
final class ConnectionSupervisor: Sendable {
    private enum Link {
        case connected(NBDConnection)
        case reconnecting(nextAttempt: Double, inProgress: Bool, lastError: NBDClientError)
        /// The export changed: no request may be resent, ever.
        case broken(NBDClientError)
        case closed
    }

    private struct State {
        var link: Link
        /// Bumped on every change, so waiters can wait for "something happened".
        var version = 0

        /// Replaces a dead connection: the first failure reconnects at
        /// once, later ones wait longer and longer.
        mutating func lose(_ error: NBDClientError, backoff: (Int) -> Double, streak: borrowing Atomic<Int>) {
            retry(error, after: backoff(streak.add(1, ordering: .relaxed).newValue))
        }

        /// Reconnects after `delay`, leaving the failure count as it is (a
        /// reconnect that found nobody listening).
        mutating func retry(_ error: NBDClientError, after delay: Double) {
            link = .reconnecting(nextAttempt: monotonicSeconds() + delay, inProgress: false, lastError: error)
            version += 1
        }
    }

    private enum Step {
        case use(NBDConnection)
        case fail(NBDClientError)
        case attempt
        case wait(version: Int, until: Double)
    }

    let address: SocketAddress
    let export: String
    let identity: ExportIdentity
    let options: RemoteBlockDevice.Options
    private let state: Guarded<State>
    /// Failures since a request last got an answer; raised under the lock
    /// (`State.lose`), ended without it by every answered batch.
    private let failureStreak = Atomic<Int>(0)
    private let reconnectCount = Atomic<UInt64>(0)

    init(address: SocketAddress, export: String, connection: NBDConnection, identity: ExportIdentity, options: RemoteBlockDevice.Options) {
        self.address = address
        self.export = export
        self.identity = identity
        self.options = options
        self.state = Guarded(State(link: .connected(connection)))
    }

    var isClosed: Bool {
        state.withLock { state in
            if case .closed = state.link { true } else { false }
        }
    }

    /// Seconds to wait before the next attempt after `streak` failures in a row.
    private func backoff(_ streak: Int) -> Double {
        guard streak > 1 else { return 0 }
        return min(options.initialBackoff * Double(1 << min(streak - 2, 30)), options.maxBackoff)
    }

    /// How many times the device has reconnected: the connections made
    /// after the first (`RemoteBlockDevice.sessionEpoch`), read by every
    /// WRITE the crypt domain starts, so kept outside the lock.
    var reconnects: UInt64 { reconnectCount.load(ordering: .acquiring) }

    /// A usable connection. While there is none, waits for (or makes) a
    /// reconnect; `deadline` is set to now plus the retry window on the
    /// first wait, and once it passes this throws `.retryWindowExpired`.
    func acquire(deadline: inout Double?) throws(NBDClientError) -> NBDConnection {
        while true {
            var stale: NBDConnection?
            let step = state.update { state -> Step in
                if case .connected(let connection) = state.link {
                    if connection.isUsable { return .use(connection) }
                    stale = connection
                    state.lose(connection.failure ?? .server(.shutdown, message: "the server is shutting down"), backoff: backoff, streak: failureStreak)
                }
                let now = monotonicSeconds()
                switch state.link {
                case .connected(let connection):
                    return .use(connection)
                case .broken(let error):
                    return .fail(error)
                case .closed:
                    return .fail(.closed)
                case .reconnecting(let nextAttempt, let inProgress, let lastError):
                    let limit = deadline ?? now + options.retryWindow
                    deadline = limit
                    if now >= limit { return .fail(.retryWindowExpired(seconds: options.retryWindow, lastError: lastError)) }
                    if !inProgress, now >= nextAttempt {
                        state.link = .reconnecting(nextAttempt: nextAttempt, inProgress: true, lastError: lastError)
                        state.version += 1
                        return .attempt
                    }
                    return .wait(version: state.version, until: inProgress ? limit : min(nextAttempt, limit))
                }
            }
            stale?.close()
            switch step {
            case .use(let connection):
                return connection
            case .fail(let error):
                throw error
            case .attempt:
                reconnect(deadline: deadline ?? monotonicSeconds())
            case .wait(let version, let until):
                _ = state.wait(until: { $0.version != version }, timeout: max(0, until - monotonicSeconds())) { _ in () }
            }
        }
    }

    /// The current connection, without waiting or reconnecting; nil while
    /// there is none. It may have died since: starting a batch on it then
    /// fails (`NBDConnection.start`), as it would had it died a moment later.
    var currentConnection: NBDConnection? {
        state.withLock { state -> NBDConnection? in
            guard case .connected(let connection) = state.link else { return nil }
            return connection
        }
    }

    /// Reports that a request got an answer: the server works again. Every
    /// answered batch says so, so it takes no lock, and writes only when
    /// there is a streak to end. An answer racing a failure may leave that
    /// failure's streak standing, as if it had come just before it.
    func requestAnswered() {
        if failureStreak.load(ordering: .relaxed) != 0 { failureStreak.store(0, ordering: .relaxed) }
    }

    /// Reports that `connection` failed a request with `error`; if it is
    /// still the current connection, the next `acquire` replaces it.
    func connectionFailed(_ connection: NBDConnection, _ error: NBDClientError) {
        let stale = state.update { state -> NBDConnection? in
            guard case .connected(let current) = state.link, current === connection else { return nil }
            state.lose(error, backoff: backoff, streak: failureStreak)
            return current
        }
        if let stale {
            if case .protocolViolation = error {
                options.connection.logger.warning("NBD server broke the protocol; reconnecting: \(error)")
            } else {
                options.connection.logger.warning("NBD connection lost; reconnecting: \(error)")
            }
            stale.close()
        }
    }

    private func reconnect(deadline: Double) {
        var connectionOptions = options.connection
        connectionOptions.handshakeTimeout = min(connectionOptions.handshakeTimeout, max(deadline - monotonicSeconds(), 0.05))
        let logger = options.connection.logger
        let outcome: Result<NBDConnection, NBDClientError>
        do throws(NBDClientError) {
            outcome = .success(try NBDConnection.connect(to: address, export: export, options: connectionOptions))
        } catch {
            outcome = .failure(error)
        }
        var unwanted: NBDConnection?
        state.update { state in
            if case .closed = state.link {
                if case .success(let connection) = outcome { unwanted = connection }
                return
            }
            switch outcome {
            case .success(let connection):
                if let why = identity.mismatch(connection) {
                    logger.error("NBD export \"\(export)\" at \(address) changed; refusing to resend requests: \(why)")
                    unwanted = connection
                    state.link = .broken(.exportChanged(why))
                } else {
                    logger.notice("reconnected to NBD export \"\(export)\" at \(address)")
                    state.link = .connected(connection)
                    reconnectCount.add(1, ordering: .releasing)
                }
                state.version += 1
            case .failure(let error):
                if case .handshake = error {
                    logger.warning("reconnecting to \(address) failed: \(error)")
                } else {
                    logger.info("reconnecting to \(address) failed: \(error)")
                }
                if Self.nobodyListens(error) {
                    state.retry(error, after: max(options.initialBackoff, Self.minimumPoll))
                } else {
                    state.lose(error, backoff: backoff, streak: failureStreak)
                }
            }
        }
        unwanted?.close()
    }

    /// Whether a reconnect failed only because no server listens at the
    /// address yet (no socket file, or nobody accepting): cheap to ask again.
    /// Any other connect failure (a bad name, no descriptors left) backs off.
    private static func nobodyListens(_ error: NBDClientError) -> Bool {
        guard case .connect(.system(_, _, let code)) = error else { return false }
        return code == ECONNREFUSED || code == ENOENT
    }

    /// The shortest pause between connects to an address nobody listens
    /// at, whatever `initialBackoff` says.
    static let minimumPoll = 0.01

    /// Closes the current connection; every caller gets `.closed` from now on.
    func close() {
        let current = state.update { state -> NBDConnection? in
            defer {
                state.link = .closed
                state.version += 1
            }
            if case .connected(let connection) = state.link { return connection }
            return nil
        }
        current?.close()
    }
}
