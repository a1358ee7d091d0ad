import BlockDevice
import Logging
import NBDProtocol
import Sockets
import Threads

/// One NBD client connection in the transmission phase. Any number of
/// threads may issue requests at once; they are pipelined on the socket,
/// each caller blocking until its own replies arrive. A reader thread
/// decodes the replies and validates them, since the server is untrusted.
///
/// A protocol violation, EOF, a socket error or a request timeout kills the
/// connection for good: every waiting request fails with the error that
/// killed it, and so does every later one (see `failure`). Reconnecting is
/// `RemoteBlockDevice`'s business.
///
/// After a request fails with NBD_ESHUTDOWN the connection sends nothing
/// more (new requests fail the same way) and its owner should `close()` it.
public final class NBDConnection: Sendable {
    /// How to connect and how long to wait.
    public struct Options: Sendable {
        /// Negotiate structured replies (NBD_OPT_STRUCTURED_REPLY), so READ
        /// replies may carry holes and errors with messages.
        public var structuredReplies: Bool
        /// Seconds the whole handshake may take.
        public var handshakeTimeout: Double
        /// Seconds from sending a request to its complete reply (and the most
        /// one socket write may block); after that the connection is dead.
        /// `nil` waits forever. Size batches so they complete within it.
        public var requestTimeout: Double?
        public var logger: Logger

        public init(
            structuredReplies: Bool = true, handshakeTimeout: Double = 10, requestTimeout: Double? = 30,
            logger: Logger = Logger(label: "bulkhead.nbd-client")
        ) {
            self.structuredReplies = structuredReplies
            self.handshakeTimeout = handshakeTimeout
            self.requestTimeout = requestTimeout
            self.logger = logger
        }
    }

    private let core: ConnectionCore

    /// The negotiated export: name, size, transmission flags, block sizes.
    public var session: ClientSession { core.session }
    /// Export size in bytes.
    public var size: UInt64 { core.session.size }
    /// Transmission flags (NBD_FLAG_*), as the server sent them.
    public var flags: TransmissionFlags { core.session.flags }
    /// NBD_INFO_BLOCK_SIZE, if the server sent it.
    public var blockSize: BlockSizeConstraints? { core.session.blockSize }
    /// Largest READ or WRITE length this connection sends: the server's
    /// maximum payload, capped at `NBDLimits.maxPayload`.
    public var maxPayload: UInt32 { core.maxPayload }

    /// Why the connection died, or nil while it is alive.
    public var failure: NBDClientError? { core.state.withLock { $0.failure } }
    /// Whether new requests can be sent.
    public var isUsable: Bool { core.state.withLock { $0.failure == nil && !$0.serverShuttingDown } }

    private init(core: ConnectionCore) {
        self.core = core
    }

    deinit { core.close() }

    /// Connects to `address`, negotiates (fixed newstyle, NBD_OPT_GO with
    /// an NBD_INFO_BLOCK_SIZE request) and enters transmission on `export`.
    public static func connect(
        to address: SocketAddress, export: String = "", options: Options = Options()
    ) throws(NBDClientError) -> NBDConnection {
        let socket: Socket
        do throws(SocketError) { socket = try Socket.connect(to: address) } catch { throw .connect(error) }
        let outcome = try HandshakeDriver.run(
            on: socket, goal: .export(export, structuredReplies: options.structuredReplies),
            timeout: options.handshakeTimeout)
        guard case .ready(let session, let leftover) = outcome else { throw .handshake(.missingExportInfo) }
        socket.setTimeout(seconds: options.requestTimeout.map { max($0, 0.001) })
        // The reader wakes this often to enforce the deadlines of batches
        // started with `start`, which nobody waits for.
        socket.setReceiveTimeout(seconds: ConnectionCore.deadlineTick(requestTimeout: options.requestTimeout))
        let core = ConnectionCore(socket: socket, session: session, requestTimeout: options.requestTimeout, logger: options.logger)
        startThread { core.readReplies(leftover: leftover) }
        options.logger.debug(
            "connected to NBD export",
            metadata: ["address": "\(address)", "export": "\(export)", "size": "\(session.size)"])
        return NBDConnection(core: core)
    }

    /// Asks the server at `address` for its exports (NBD_OPT_LIST).
    public static func listExports(at address: SocketAddress, timeout: Double = 10) throws(NBDClientError) -> [ListedExport] {
        let socket: Socket
        do throws(SocketError) { socket = try Socket.connect(to: address) } catch { throw .connect(error) }
        defer { socket.shutdown() }
        guard case .listed(let exports) = try HandshakeDriver.run(on: socket, goal: .list, timeout: timeout) else {
            throw .handshake(.missingExportInfo)
        }
        return exports
    }

    /// Sends every operation back to back (pipelined, in as few socket
    /// writes as practical), then waits for all their replies. Results are
    /// in the order of `operations`. Buffers must stay valid, and read
    /// buffers untouched, until this returns.
    public func perform(_ operations: [NBDOperation]) -> [Result<Void, NBDClientError>] {
        core.perform(operations)
    }

    /// Sends every operation back to back, like `perform(_:)`, but returns
    /// without waiting for the replies.
    ///
    /// Returns false, having sent nothing and without ever calling
    /// `completion`, if the connection is not usable (it failed, was
    /// closed, or the server answered NBD_ESHUTDOWN). Otherwise returns
    /// true, and `completion` is called exactly once with one result per
    /// operation, in their order, once every reply has arrived (and all
    /// READ data is in its buffer) or the connection has died. Buffers must
    /// stay valid, and read buffers untouched, until then; the connection
    /// never touches them after calling `completion`.
    ///
    /// `completion` runs on the connection's reader thread, after the reader
    /// has decoded everything it read, with no lock held. It runs instead on
    /// the thread that ends the connection (a failed send, a `perform`
    /// caller's timeout, `close()`), or on the calling thread before
    /// `start` returns when no operation passed the local checks. It must
    /// not block, and must not call `start` or `perform` on this connection:
    /// the reader thread that runs it is the one that drains the replies.
    ///
    /// Nobody waits for these requests, so the reader enforces their
    /// deadline (`Options.requestTimeout`, checked every quarter of it and
    /// at least once a second): once the oldest has passed, the connection
    /// fails with `.timedOut(.reply)`.
    ///
    /// With `lending`, WRITE payloads larger than
    /// `ConnectionCore.inlinePayloadLimit` go to the socket by reference
    /// (`SplicePipe.send`): the peer may read them after it has answered,
    /// so their memory must hold nothing but bytes meant for it, then and
    /// after (`AsynchronousBlockDevice.startLentWrites`).
    public func start(
        _ operations: [NBDOperation], lending: Bool = false,
        completion: @escaping @Sendable (BatchResults) -> Void
    ) -> Bool {
        core.start(operations, lending: lending, completion: completion)
    }

    /// NBD_CMD_READ of `buffer.count` bytes at `offset`.
    public func read(at offset: UInt64, into buffer: UnsafeMutableRawBufferPointer) throws(NBDClientError) {
        try performOne(.read(offset: offset, into: buffer))
    }

    /// NBD_CMD_READ of `length` bytes at `offset`.
    public func read(at offset: UInt64, length: Int) throws(NBDClientError) -> [UInt8] {
        var bytes = [UInt8](repeating: 0, count: length)
        let result = bytes.withUnsafeMutableBytes { perform([.read(offset: offset, into: $0)])[0] }
        try result.get()
        return bytes
    }

    /// NBD_CMD_WRITE of `buffer` at `offset`, with NBD_CMD_FLAG_FUA if `fua`.
    public func write(at offset: UInt64, from buffer: UnsafeRawBufferPointer, fua: Bool = false) throws(NBDClientError) {
        try performOne(.write(offset: offset, from: buffer, fua: fua))
    }

    /// NBD_CMD_WRITE of `bytes` at `offset`, with NBD_CMD_FLAG_FUA if `fua`.
    public func write(at offset: UInt64, bytes: [UInt8], fua: Bool = false) throws(NBDClientError) {
        let result = bytes.withUnsafeBytes { perform([.write(offset: offset, from: $0, fua: fua)])[0] }
        try result.get()
    }

    /// NBD_CMD_FLUSH.
    public func flush() throws(NBDClientError) {
        try performOne(.flush)
    }

    /// NBD_CMD_TRIM, with NBD_CMD_FLAG_FUA if `fua`.
    public func trim(at offset: UInt64, length: UInt32, fua: Bool = false) throws(NBDClientError) {
        try performOne(.trim(offset: offset, length: length, fua: fua))
    }

    /// NBD_CMD_WRITE_ZEROES.
    public func writeZeroes(at offset: UInt64, length: UInt32, flags: ZeroFlags = []) throws(NBDClientError) {
        try performOne(.writeZeroes(offset: offset, length: length, flags: flags))
    }

    /// Ends the connection (NBD_CMD_DISC). Requests still waiting fail
    /// with `.closed`. Also done when the connection is released.
    public func close() {
        core.close()
    }

    private func performOne(_ operation: NBDOperation) throws(NBDClientError) {
        try perform([operation])[0].get()
    }
}
