import Logging
import NBDProtocol
import Sockets
import Threads

/// One client connection: runs the handshake on its own thread, then hands
/// the socket to a `Transmission` and its workers.
final class Connection: Sendable {
    /// Bytes read from the socket at once during the handshake; the largest
    /// option the handshake accepts fits in one read.
    static let handshakeReadSize = 16 * 1024

    let id: UInt64
    let socket: Socket
    let server: NBDServer
    let logger: Logger

    init(id: UInt64, socket: Socket, listener: SocketAddress, server: NBDServer) {
        self.id = id
        self.socket = socket
        self.server = server
        var logger = server.logger
        logger[metadataKey: "connection"] = "\(id)"
        self.logger = logger
        logger.info("connected", metadata: ["listener": "\(listener)", "peer": "\(peerDescription(of: socket))"])
    }

    func run() {
        guard let (session, leftover) = negotiate() else { return end() }
        guard let export = server.exports[session.export.name] else {
            // The catalog is built from the same exports, so this cannot happen.
            logger.error("negotiated an export the server does not have", metadata: ["export": "\(session.export.name)"])
            return end()
        }
        logger.debug(
            "transmission",
            metadata: [
                "export": "\(export.name)", "structuredReplies": "\(session.structuredReplies)",
                "flags": "0x\(String(session.flags.rawValue, radix: 16))",
            ])
        setSendTimeout(socket, seconds: server.configuration.replyTimeout)
        Transmission(connection: self, session: session, device: export.device, leftover: leftover).run()
    }

    /// Closes the connection once no thread uses it any more.
    func end() {
        socket.shutdown()
        logger.info("disconnected")
        server.connectionEnded(id)
    }

    /// Runs fixed newstyle negotiation against the handshake deadline.
    /// Returns the session and the bytes already received after it, or
    /// nil if the connection is to be closed.
    private func negotiate() -> (NegotiatedSession, [UInt8])? {
        var handshake = ServerHandshake(
            catalog: server.catalog, offersStructuredReplies: server.configuration.offersStructuredReplies)
        let deadline = monotonicSeconds() + server.configuration.handshakeTimeout
        var buffer = [UInt8](repeating: 0, count: Self.handshakeReadSize)
        do throws(SocketError) {
            socket.setTimeout(seconds: server.configuration.handshakeTimeout)
            try socket.writeAll(handshake.greeting())
            while true {
                let remaining = deadline - monotonicSeconds()
                guard remaining > 0 else { throw SocketError.timedOut }
                socket.setTimeout(seconds: remaining)
                var failure: SocketError?
                let count = buffer.withUnsafeMutableBytes { raw -> Int in
                    do throws(SocketError) { return try socket.read(into: raw) } catch {
                        failure = error
                        return 0
                    }
                }
                if let failure { throw failure }
                guard count > 0 else {
                    logger.debug("closed by the client during the handshake")
                    return nil
                }
                for event in handshake.receive(buffer[..<count]) {
                    switch event {
                    case .send(let bytes):
                        try socket.writeAll(bytes)
                    case .transmission(let session):
                        socket.setTimeout(seconds: nil)
                        return (session, handshake.takeLeftover())
                    case .close(let error):
                        if error == .clientAborted {
                            logger.debug("client aborted the handshake")
                        } else {
                            logger.warning("handshake failed", metadata: ["error": "\(error)"])
                        }
                        return nil
                    }
                }
            }
        } catch .timedOut {
            logger.warning("handshake timed out", metadata: ["timeout": "\(server.configuration.handshakeTimeout)"])
            return nil
        } catch {
            logger.debug("handshake ended", metadata: ["error": "\(error)"])
            return nil
        }
    }
}
