import NBDProtocol
import Sockets

/// Everything that can go wrong talking to an NBD server. The storage
/// domain on the other end is untrusted: every way it can misbehave ends
/// in one of these, never in a crash or a hang.
public indirect enum NBDClientError: Error, Sendable, Equatable, CustomStringConvertible {
    /// What was waited for when a timeout expired.
    public enum Phase: String, Sendable, Equatable {
        /// Fixed newstyle negotiation, up to NBD_OPT_GO's final reply.
        case handshake
        /// A reply to a transmission request.
        case reply
        /// Sending requests: the server stopped reading them.
        case send
    }

    /// The socket could not be connected.
    case connect(SocketError)
    /// The handshake failed: the server broke the protocol, or refused an
    /// option (for example NBD_OPT_GO for an unknown export).
    case handshake(NBDProtocolError)
    /// The server broke the protocol during transmission; the connection
    /// was closed because the stream can no longer be trusted.
    case protocolViolation(NBDProtocolError)
    /// The server answered the request with an NBD error.
    case server(NBDErrorCode, message: String)
    /// The connection broke (the server closed it, or a socket error).
    case connectionLost(SocketError)
    /// Nothing arrived in time; the connection was closed.
    case timedOut(Phase)
    /// After a reconnect the export no longer looks like the one first
    /// connected to (its size or block constraints changed).
    case exportChanged(String)
    /// The request cannot be sent as given (length, alignment, a command
    /// the export does not advertise); nothing was sent.
    case invalidRequest(String)
    /// A remote device gave up on a request: it kept failing, the last
    /// time with `lastError`, for the whole retry window from its first
    /// failure, across any reconnects in between.
    case retryWindowExpired(seconds: Double, lastError: NBDClientError)
    /// The connection or device was closed locally.
    case closed

    public var description: String {
        switch self {
        case .connect(let error): "cannot connect to the NBD server: \(error)"
        case .handshake(let error): "NBD handshake failed: \(error)"
        case .protocolViolation(let error): "NBD server broke the protocol: \(error)"
        case .server(let code, let message):
            "NBD server returned \(code)" + (message.isEmpty ? "" : ": \(message)")
        case .connectionLost(let error): "NBD connection lost: \(error)"
        case .timedOut(let phase): "NBD server did not answer in time (\(phase.rawValue))"
        case .exportChanged(let why): "the NBD export changed across a reconnect: \(why)"
        case .invalidRequest(let why): "invalid NBD request: \(why)"
        case .retryWindowExpired(let seconds, let lastError):
            "NBD request not answered within the \(seconds) s retry window; last error: \(lastError)"
        case .closed: "the NBD connection was closed"
        }
    }

    /// Whether a remote device should reconnect and resend the request:
    /// the connection, not the request, failed.
    var isConnectionFailure: Bool {
        switch self {
        case .connect, .handshake, .protocolViolation, .connectionLost, .timedOut: true
        case .server(let code, _): code == .shutdown
        case .exportChanged, .invalidRequest, .retryWindowExpired, .closed: false
        }
    }
}
