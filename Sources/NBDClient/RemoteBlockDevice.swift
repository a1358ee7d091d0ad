import BlockDevice
import Logging
import NBDProtocol
import Sockets
import Threads

/// A `BlockDevice` served by a remote NBD server that may go away and come
/// back: the crypt domain's view of the untrusted storage domain.
///
/// Requests larger than the server's maximum payload are split, and
/// batches (`perform(_:)`) are pipelined on one connection. When the
/// connection is lost (EOF, socket error, a request timing out, a protocol
/// violation, NBD_ESHUTDOWN), requests in flight and new ones wait while
/// the device reconnects with exponential backoff, then are resent on the
/// new connection. A request fails only once it has been failing for the
/// whole retry window (`.retryWindowExpired`), or at once if the server
/// comes back with a different export (`.exportChanged`). A server that
/// keeps breaking the protocol is therefore retried for at most the
/// window, plus one request timeout and one handshake.
///
/// Durability across reconnects: resending READ, WRITE, TRIM and
/// WRITE_ZEROES is safe, since each is idempotent. NBD_CMD_FLUSH is not
/// such a guarantee: a flush that succeeds on a new connection covers only
/// writes the new server instance completed. A write acknowledged on the old
/// connection may have been lost if the server restarted before flushing it,
/// and no later flush can reveal that. Callers that need durability across
/// storage restarts must detect it themselves (the crypt domain's commit
/// protocol does); FUA writes are covered because they are resent until a
/// connection acknowledges them, and that acknowledgement implies durability.
public final class RemoteBlockDevice: BlockDevice {
    /// Timeouts and the reconnect policy.
    public struct Options: Sendable {
        /// Handshake and per-request timeouts, structured replies, logger.
        /// A request whose reply takes longer than `requestTimeout` counts
        /// as a lost connection.
        public var connection: NBDConnection.Options
        /// Seconds a request keeps being retried across reconnects before
        /// it fails with `.retryWindowExpired`.
        public var retryWindow: Double
        /// Delay after the first failed reconnect attempt; it doubles after
        /// each further failure up to `maxBackoff`. While nobody listens
        /// at the address, reconnects are tried every `initialBackoff` (at
        /// least 10 ms).
        public var initialBackoff: Double
        public var maxBackoff: Double

        public init(
            connection: NBDConnection.Options = NBDConnection.Options(), retryWindow: Double = 30,
            initialBackoff: Double = 0.05, maxBackoff: Double = 1
        ) {
            self.connection = connection
            self.retryWindow = retryWindow
            self.initialBackoff = initialBackoff
            self.maxBackoff = maxBackoff
        }
    }

    /// Zeroing and trimming need no payload, but servers may refuse huge
    /// lengths (NBD_EOVERFLOW); larger ranges are sent in pieces of this
    /// size, a multiple of every possible minimum block size.
    public static let effectChunkSize: UInt64 = 1 << 30

    public let size: UInt64
    public let isReadOnly: Bool
    public let capabilities: BlockDeviceCapabilities
    public let minimumBlockSize: UInt32
    /// NBD_INFO_BLOCK_SIZE's preferred size, or 4096 if not advertised.
    public let preferredBlockSize: UInt32
    /// The largest READ or WRITE sent; bigger requests are split.
    public let chunkSize: UInt32
    /// Transmission flags of the first connection.
    public let flags: TransmissionFlags
    let supervisor: ConnectionSupervisor

    /// Connects to `export` at `address`. The first connection is not
    /// retried: a failure here is reported at once.
    public init(
        connectingTo address: SocketAddress, export: String = "", options: Options = Options()
    ) throws(NBDClientError) {
        let connection = try NBDConnection.connect(to: address, export: export, options: options.connection)
        let minimum = connection.blockSize?.minimum ?? 1
        size = connection.size
        flags = connection.flags
        isReadOnly = flags.contains(.readOnly)
        minimumBlockSize = minimum
        preferredBlockSize = connection.blockSize?.preferred ?? 4096
        // Block sizes are powers of two, so this stays aligned.
        chunkSize = connection.maxPayload / minimum * minimum
        var capabilities: BlockDeviceCapabilities = []
        if flags.contains(.sendFlush) { capabilities.insert(.flush) }
        if flags.contains(.sendTrim) { capabilities.insert(.trim) }
        if flags.contains(.sendWriteZeroes) { capabilities.insert(.writeZeroes) }
        if flags.contains(.sendFastZero) { capabilities.insert(.fastZero) }
        if flags.contains(.canMultiConn) { capabilities.insert(.multiConnConsistent) }
        if flags.contains(.rotational) { capabilities.insert(.rotational) }
        self.capabilities = capabilities
        supervisor = ConnectionSupervisor(
            address: address, export: export, connection: connection,
            identity: ExportIdentity(size: size, isReadOnly: isReadOnly, minimumBlockSize: minimum, chunkSize: chunkSize),
            options: options)
    }

    /// The number of reconnects so far: a new connection may reach a new
    /// server instance, which a flush cannot vouch for writes acknowledged
    /// before it (see above).
    public var sessionEpoch: UInt64 { supervisor.reconnects }

    deinit { supervisor.close() }

    /// Closes the connection; requests waiting or sent later fail with `.closed`.
    public func close() {
        supervisor.close()
    }

    // MARK: Batches

    /// Performs a batch: each operation is checked against the export,
    /// split into pieces of at most `chunkSize`, and all pieces are
    /// pipelined on one connection, resent across reconnects as described
    /// above. Results are in the order of `operations`. Buffers must stay
    /// valid, and read buffers untouched, until this returns.
    public func perform(_ operations: [NBDOperation]) -> [Result<Void, NBDClientError>] {
        let plan = BatchPlan(operations, device: self)
        return plan.merge.results(of: performWithRetry(plan.pieces))
    }

    /// Performs a batch and throws the first failure, in operation order.
    public func performAll(_ operations: [NBDOperation]) throws(NBDClientError) {
        for result in perform(operations) { try result.get() }
    }

    func problem(with operation: NBDOperation) -> String? {
        let length: UInt64
        switch operation {
        case .flush: return nil
        case .read(_, let buffer): length = UInt64(buffer.count)
        case .write(_, let buffer, _): length = UInt64(buffer.count)
        case .trim(_, let count, _), .writeZeroes(_, let count, _): length = UInt64(count)
        }
        let (end, overflow) = operation.offset.addingReportingOverflow(length)
        guard !overflow, end <= size else {
            return "\(operation.command) at \(operation.offset)+\(length) lies outside the export of \(size) bytes"
        }
        return nil
    }

    /// How many pieces `operation` goes out as: a READ or WRITE in pieces
    /// of at most `chunkSize` bytes (none when empty), anything else whole.
    /// The one rule for splitting: an operation of one piece is sent as it
    /// is, so a batch of such operations goes out unchanged (`BatchPlan`).
    func pieceCount(of operation: NBDOperation) -> Int {
        let bytes: Int
        switch operation {
        case .read(_, let buffer): bytes = buffer.count
        case .write(_, let buffer, _): bytes = buffer.count
        default: return 1
        }
        let chunk = Int(chunkSize)
        return (bytes + chunk - 1) / chunk
    }

    /// Piece `index` of the `pieceCount(of:)` pieces of `operation`: the
    /// `chunkSize` bytes from `index * chunkSize` on (the last perhaps fewer).
    func piece(_ index: Int, of operation: NBDOperation) -> NBDOperation {
        let chunk = Int(chunkSize)
        let start = index * chunk
        switch operation {
        case .read(let offset, let buffer):
            let end = min(start + chunk, buffer.count)
            return .read(offset: offset + UInt64(start), into: UnsafeMutableRawBufferPointer(rebasing: buffer[start..<end]))
        case .write(let offset, let buffer, let fua):
            let end = min(start + chunk, buffer.count)
            return .write(offset: offset + UInt64(start), from: UnsafeRawBufferPointer(rebasing: buffer[start..<end]), fua: fua)
        default:
            return operation
        }
    }

    /// Sends `pieces`, resending those that failed because the connection
    /// did, until each has a final result or the retry window has passed.
    private func performWithRetry(_ pieces: [NBDOperation]) -> [Result<Void, NBDClientError>] {
        var results = [Result<Void, NBDClientError>](repeating: .failure(.closed), count: pieces.count)
        var remaining = Array(pieces.indices)
        var deadline: Double?
        while !remaining.isEmpty {
            let connection: NBDConnection
            do throws(NBDClientError) {
                connection = try supervisor.acquire(deadline: &deadline)
            } catch {
                for index in remaining { results[index] = .failure(error) }
                break
            }
            var retry: [Int] = []
            var lastFailure: NBDClientError?
            var answered = false
            for (position, result) in connection.perform(remaining.map { pieces[$0] }).enumerated() {
                if case .failure(let error) = result, shouldResend(error) {
                    retry.append(remaining[position])
                    lastFailure = error
                } else {
                    results[remaining[position]] = result
                    switch result {
                    case .success, .failure(.server): answered = true
                    case .failure: break
                    }
                }
            }
            if answered { supervisor.requestAnswered() }
            remaining = retry
            guard let lastFailure else { break }
            supervisor.connectionFailed(connection, lastFailure)
            let now = monotonicSeconds()
            let limit = deadline ?? now + supervisor.options.retryWindow
            deadline = limit
            // Checked here too: another thread may have reconnected already,
            // and a server that fails every request must still run out the window.
            if now >= limit {
                let error = NBDClientError.retryWindowExpired(seconds: supervisor.options.retryWindow, lastError: lastFailure)
                for index in remaining { results[index] = .failure(error) }
                break
            }
        }
        return results
    }

    private func shouldResend(_ error: NBDClientError) -> Bool {
        if error.isConnectionFailure { return true }
        // A connection the supervisor closed to replace it, not the device closing.
        return error == .closed && !supervisor.isClosed
    }
}
