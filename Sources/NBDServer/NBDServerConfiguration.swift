import NBDProtocol
import Sockets

/// Limits and tuning of an `NBDServer`. Every resource a client can tie up
/// is bounded by one of these.
public struct NBDServerConfiguration: Sendable {
    /// Connections open at once, handshaking or transmitting; more are
    /// closed as soon as they are accepted.
    public static let defaultMaxConnections = 256
    /// Seconds a client has to finish the handshake before it is dropped,
    /// so that a silent client cannot hold a connection slot forever.
    public static let defaultHandshakeTimeout = 30.0
    /// Seconds a reply may wait for the client to make room for it (a
    /// client that stops reading replies is dropped).
    public static let defaultReplyTimeout = 60.0
    /// Threads serving requests of one connection. Each reads requests in
    /// turn, then executes its request and sends the reply while the next
    /// thread reads, so replies may go out of order. With fio against a
    /// tmpfs file on a 2-CPU machine, 2 to 16 workers all beat nbdkit on
    /// 4 KiB requests, within the run-to-run noise of each other, while for
    /// 1 MiB reads 4 workers took a third fewer system calls and context
    /// switches per request than 8. A client wanting more device calls in
    /// flight can open more connections (NBD_FLAG_CAN_MULTI_CONN).
    public static let defaultWorkersPerConnection = 4
    /// Stack bytes of each connection and worker thread. glibc's default of
    /// 8 MiB is address space only, until the process locks its memory
    /// (the crypt domain's mlockall): then 32 workers kept 272 MB resident.
    /// The request paths keep their buffers on the heap.
    public static let defaultThreadStackSize = 1 << 20
    /// Bytes read from a socket at once in the transmission phase; large,
    /// so that one system call picks up many pipelined requests.
    public static let defaultReadChunkSize = 256 * 1024
    /// Seconds `shutdown()` waits for connection threads to finish.
    public static let defaultShutdownTimeout = 5.0

    public var maxConnections: Int
    public var handshakeTimeout: Double
    public var replyTimeout: Double
    public var workersPerConnection: Int
    public var threadStackSize: Int
    public var readChunkSize: Int
    public var shutdownTimeout: Double
    /// Whether NBD_OPT_STRUCTURED_REPLY is accepted. A server that sends
    /// no holes and no block status gains only error messages from
    /// structured replies (without them an error is its errno alone),
    /// while each READ reply costs its client more: libnbd 1.14 takes four
    /// receive calls per structured READ reply (16 bytes, the other 4 of
    /// the chunk header, the 8-byte offset, the data) against two per
    /// simple one. fio against nbdkit's file plugin, 4 KiB random reads at
    /// QD32: 112k-120k IOPS with structured replies, 133k-151k with
    /// `--no-sr`.
    public var offersStructuredReplies: Bool
    /// Decides whether an accepted peer may talk to the server at all, e.g.
    /// from its SO_PEERCRED credentials; nil admits everyone.
    public var acceptPeer: (@Sendable (Socket) -> Bool)?
    /// Where WRITE payloads get their memory; nil for malloc alone.
    public var payloadMemory: (any PayloadMemory)?

    public init(
        maxConnections: Int = defaultMaxConnections,
        handshakeTimeout: Double = defaultHandshakeTimeout,
        replyTimeout: Double = defaultReplyTimeout,
        workersPerConnection: Int = defaultWorkersPerConnection,
        threadStackSize: Int = defaultThreadStackSize,
        readChunkSize: Int = defaultReadChunkSize,
        shutdownTimeout: Double = defaultShutdownTimeout,
        offersStructuredReplies: Bool = true,
        payloadMemory: (any PayloadMemory)? = PayloadCache.shared
    ) {
        self.maxConnections = max(1, maxConnections)
        self.handshakeTimeout = handshakeTimeout
        self.replyTimeout = replyTimeout
        self.workersPerConnection = max(1, workersPerConnection)
        self.threadStackSize = max(256 * 1024, threadStackSize)
        self.readChunkSize = max(4096, readChunkSize)
        self.shutdownTimeout = shutdownTimeout
        self.offersStructuredReplies = offersStructuredReplies
        self.payloadMemory = payloadMemory
    }
}
