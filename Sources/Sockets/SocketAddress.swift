#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif

/// Where a server listens or a client connects: `unix:/path/to/socket` or
/// `tcp:HOST:PORT` (IPv6 hosts in brackets, `tcp:[::1]:10809`).
public enum SocketAddress: Sendable, Hashable, CustomStringConvertible {
    case unix(path: String)
    case tcp(host: String, port: UInt16)

    /// Longest Unix socket path: `sun_path` holds 108 bytes with the NUL.
    public static let maxUnixPathLength = 107

    public init(parsing text: String) throws(SocketError) {
        if text.hasPrefix("unix:") {
            let path = String(text.dropFirst(5))
            guard !path.isEmpty else { throw .badAddress(text, "empty socket path") }
            guard path.utf8.count <= Self.maxUnixPathLength else {
                throw .badAddress(text, "socket path longer than \(Self.maxUnixPathLength) bytes")
            }
            self = .unix(path: path)
        } else if text.hasPrefix("tcp:") {
            let rest = text.dropFirst(4)
            guard let colon = rest.lastIndex(of: ":") else { throw .badAddress(text, "expected tcp:HOST:PORT") }
            var host = String(rest[..<colon])
            if host.hasPrefix("["), host.hasSuffix("]") { host = String(host.dropFirst().dropLast()) }
            guard !host.isEmpty else { throw .badAddress(text, "empty host") }
            guard let port = UInt16(rest[rest.index(after: colon)...]) else {
                throw .badAddress(text, "port must be a number from 0 to 65535")
            }
            self = .tcp(host: host, port: port)
        } else {
            throw .badAddress(text, "expected unix:PATH or tcp:HOST:PORT")
        }
    }

    public var description: String {
        switch self {
        case .unix(let path): "unix:\(path)"
        case .tcp(let host, let port): host.contains(":") ? "tcp:[\(host)]:\(port)" : "tcp:\(host):\(port)"
        }
    }
}

/// Why a socket operation failed.
public enum SocketError: Error, Sendable, Equatable, CustomStringConvertible {
    case badAddress(String, String)
    case addressInUse(String)
    case system(operation: String, address: String, errno: Int32)
    case connectionClosed
    case timedOut

    public var description: String {
        switch self {
        case .badAddress(let text, let why): "bad address \"\(text)\": \(why)"
        case .addressInUse(let address): "\(address) is already in use by another server"
        case .system(let operation, let address, let code):
            "\(operation) \(address): \(String(cString: strerror(code)))"
        case .connectionClosed: "connection closed by peer"
        case .timedOut: "timed out"
        }
    }
}
