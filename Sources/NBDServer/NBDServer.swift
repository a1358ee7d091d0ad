#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif
import BlockDevice
import Logging
import NBDProtocol
import Sockets
import Threads

/// An NBD server (proto.md, fixed newstyle negotiation and the transmission
/// phase) serving named exports on any number of listeners. Each listener
/// has an accept thread; each connection a thread for its handshake, then
/// a small pool of worker threads for its requests. Everything on the wire
/// is parsed and encoded by the NBDProtocol state machines; nothing a client
/// sends can affect another connection.
public final class NBDServer: Sendable {
    private struct State {
        var stopping = false
        var listeners: [Listener] = []
        var acceptThreads = 0
        var nextConnectionID: UInt64 = 1
        /// Open connections by id: their sockets, so `shutdown()` can wake them.
        var connections: [UInt64: Socket] = [:]
    }

    let configuration: NBDServerConfiguration
    let logger: Logger
    let catalog: ExportCatalog
    let exports: [String: NBDExport]
    private let state = Guarded(State())

    /// Checks the exports (names unique and at most NBD_MAX_STRING bytes,
    /// valid block sizes). A client asking for the empty name gets
    /// `defaultExport`, if given.
    public init(
        exports: [NBDExport], defaultExport: String? = nil,
        configuration: NBDServerConfiguration = NBDServerConfiguration(),
        logger: Logger = Logger(label: "bulkhead.nbd-server")
    ) throws(NBDServerError) {
        guard !exports.isEmpty else { throw .noExports }
        var byName: [String: NBDExport] = [:]
        for export in exports {
            guard byName[export.name] == nil else { throw .duplicateExport(export.name) }
            guard export.name.utf8.count <= NBDLimits.maxStringLength else {
                throw .badExportName(export.name, "longer than \(NBDLimits.maxStringLength) bytes")
            }
            guard export.description.utf8.count <= NBDLimits.maxStringLength else {
                throw .badExportDescription(export.name, "longer than \(NBDLimits.maxStringLength) bytes")
            }
            guard export.blockSize.isValid else {
                throw .badBlockSize(export: export.name, minimum: export.device.minimumBlockSize)
            }
            byName[export.name] = export
        }
        if let defaultExport, byName[defaultExport] == nil { throw .unknownDefaultExport(defaultExport) }
        self.exports = byName
        self.catalog = ExportCatalog(exports: exports.map(\.exportDescription), defaultExportName: defaultExport)
        self.configuration = configuration
        self.logger = logger
    }

    /// Starts accepting connections on `listeners`. The server owns them
    /// from now on and closes them in `shutdown()`.
    public func start(_ listeners: [Listener]) {
        // sendfile(2), unlike send, has no MSG_NOSIGNAL: a client gone in
        // the middle of a spliced READ must be an EPIPE, not the end of the
        // process (`ReplyChannel.sendSpliced`).
        signal(SIGPIPE, SIG_IGN)
        let accepted = state.withLock { state -> Bool in
            guard !state.stopping else { return false }
            state.listeners.append(contentsOf: listeners)
            state.acceptThreads += listeners.count
            return true
        }
        guard accepted else {
            listeners.forEach { $0.close() }
            return
        }
        for listener in listeners {
            var address = listener.address
            if case .tcp(let host, _) = address, let port = listener.boundPort { address = .tcp(host: host, port: port) }
            let error = tryStartThread { self.acceptLoop(listener) }
            if error == 0 {
                logger.info("listening", metadata: ["address": "\(address)"])
            } else {
                logger.error("cannot start an accept thread", metadata: ["address": "\(address)", "errno": "\(error)"])
                state.update { $0.acceptThreads -= 1 }
                listener.close()
            }
        }
    }

    /// Connections currently open.
    public var connectionCount: Int { state.withLock { $0.connections.count } }

    /// Stops accepting, closes the listeners (removing Unix socket files),
    /// shuts every connection down and waits, at most
    /// `configuration.shutdownTimeout` seconds, for their threads. Returns
    /// false if some thread was still busy (such as in a hung device call).
    @discardableResult
    public func shutdown() -> Bool {
        let (listeners, sockets) = state.update { state in
            state.stopping = true
            let listeners = state.listeners
            state.listeners = []
            return (listeners, Array(state.connections.values))
        }
        for listener in listeners { listener.close() }
        for socket in sockets { socket.shutdown() }
        let finished = state.wait(
            until: { $0.acceptThreads == 0 && $0.connections.isEmpty }, timeout: configuration.shutdownTimeout
        ) { _ in true }
        if finished == nil {
            logger.warning("shutdown timed out with connections still busy")
            return false
        }
        return true
    }

    /// Seconds between two warnings about refused connections, so a flood
    /// of connections cannot flood the log too.
    static let refusalWarningInterval = 10.0

    private func acceptLoop(_ listener: Listener) {
        defer { state.update { $0.acceptThreads -= 1 } }
        var lastRefusalWarning = -Double.infinity
        var refusedSinceWarning = 0
        while true {
            let socket: Socket
            do {
                socket = try listener.accept()
            } catch {
                if state.withLock({ $0.stopping }) { return }
                logger.error("accept failed", metadata: ["address": "\(listener.address)", "error": "\(error)"])
                usleep(100_000)
                continue
            }
            if let acceptPeer = configuration.acceptPeer, !acceptPeer(socket) {
                logger.warning("refusing connection: peer not allowed", metadata: ["peer": "\(peerDescription(of: socket))"])
                continue
            }
            let id = state.withLock { state -> UInt64? in
                guard !state.stopping, state.connections.count < configuration.maxConnections else { return nil }
                let id = state.nextConnectionID
                state.nextConnectionID += 1
                state.connections[id] = socket
                return id
            }
            guard let id else {
                // Dropping the socket closes it.
                refusedSinceWarning += 1
                let now = monotonicSeconds()
                if now - lastRefusalWarning >= Self.refusalWarningInterval {
                    logger.warning(
                        "refusing connections: limit reached",
                        metadata: [
                            "address": "\(listener.address)", "limit": "\(configuration.maxConnections)",
                            "refused": "\(refusedSinceWarning)",
                        ])
                    lastRefusalWarning = now
                    refusedSinceWarning = 0
                }
                continue
            }
            let connection = Connection(id: id, socket: socket, listener: listener.address, server: self)
            let error = tryStartThread(stackSize: configuration.threadStackSize) { connection.run() }
            if error != 0 {
                logger.warning("cannot start a connection thread", metadata: ["errno": "\(error)"])
                connection.end()
            }
        }
    }

    /// Called once per connection when its last thread is done with it.
    func connectionEnded(_ id: UInt64) {
        state.update { _ = $0.connections.removeValue(forKey: id) }
    }
}
