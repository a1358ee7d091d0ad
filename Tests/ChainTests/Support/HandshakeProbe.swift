import NBDProtocol
import Sockets

/// What a server answered to NBD_OPT_GO for one export name.
enum GoOutcome: Equatable, CustomStringConvertible {
    /// NBD_REP_ACK: the export opened, with the size NBD_INFO_EXPORT gave.
    case opened(size: UInt64)
    /// An NBD_REP_ERR_* reply and its message.
    case refused(OptionReplyType, message: String)

    var description: String {
        switch self {
        case .opened(let size): "opened (size \(size))"
        case .refused(let type, let message): "refused with \(type) \"\(message)\""
        }
    }
}

/// The one exchange the stock tools do not expose: the fixed-newstyle
/// handshake with NBD_OPT_GO for a chosen export name (proto.md, "Option
/// types"), driven by `ClientHandshake`, then NBD_CMD_DISC. Every read is
/// bounded by `timeout`.
enum HandshakeProbe {
    /// Connects to the Unix socket `path` and asks for `export` with NBD_OPT_GO.
    static func go(socket path: String, export: String, timeout: Double = 10) throws -> GoOutcome {
        let socket = try Socket.connect(to: .unix(path: path))
        socket.setTimeout(seconds: timeout)
        defer { socket.shutdown() }
        var handshake = ClientHandshake(goal: .export(export, structuredReplies: false))
        var buffer = [UInt8](repeating: 0, count: 4096)
        while true {
            let count = try buffer.withUnsafeMutableBytes { raw throws(SocketError) in try socket.read(into: raw) }
            guard count > 0 else { throw ChainError.setup("\(path): closed during the handshake") }
            for event in handshake.receive(buffer[..<count]) {
                switch event {
                case .send(let bytes):
                    try socket.writeAll(bytes)
                case .ready(let session):
                    // Transmission phase: leave politely with NBD_CMD_DISC.
                    var disconnect: [UInt8] = []
                    RequestHeader(command: .disconnect, cookie: 1, offset: 0, length: 0).encode(into: &disconnect)
                    try? socket.writeAll(disconnect)
                    return .opened(size: session.size)
                case .failed(.optionRefused(_, let type, let message)):
                    return .refused(type, message: message)
                case .failed(let error):
                    throw ChainError.setup("\(path): handshake failed: \(error)")
                case .listed:
                    throw ChainError.setup("\(path): an export list, not asked for")
                }
            }
        }
    }
}
