#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif

/// A listening stream socket. A Unix socket path is created on `bind` and
/// removed on `close`; a stale socket file that nobody listens on is
/// replaced, while a live one is reported as in use.
public final class Listener: Sendable {
    public let address: SocketAddress
    public let fileDescriptor: Int32

    /// Connections the kernel queues before `accept`.
    public static let backlog: Int32 = 128

    public init(binding address: SocketAddress, permissions: mode_t? = nil) throws(SocketError) {
        self.address = address
        switch address {
        case .unix(let path):
            var addr = try UnixAddress(path: path)
            if access(path, F_OK) == 0 {
                // Someone answering means in use; ECONNREFUSED means a stale file.
                if (try? Socket.connect(to: address)) != nil { throw .addressInUse(address.description) }
                unlink(path)
            }
            let fd = Glibc.socket(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
            guard fd >= 0 else { throw .system(operation: "socket for", address: address.description, errno: errno) }
            guard addr.withSockaddr({ Glibc.bind(fd, $0, $1) }) == 0 else {
                let code = errno
                Glibc.close(fd)
                if code == EADDRINUSE { throw .addressInUse(address.description) }
                throw .system(operation: "bind", address: address.description, errno: code)
            }
            if let permissions { chmod(path, permissions) }
            fileDescriptor = fd
        case .tcp(let host, let port):
            var hints = addrinfo()
            hints.ai_socktype = Int32(SOCK_STREAM.rawValue)
            hints.ai_flags = AI_PASSIVE
            var list: UnsafeMutablePointer<addrinfo>?
            guard getaddrinfo(host, String(port), &hints, &list) == 0, let info = list else {
                throw .badAddress(address.description, "cannot resolve host")
            }
            defer { freeaddrinfo(list) }
            let fd = Glibc.socket(info.pointee.ai_family, info.pointee.ai_socktype | Int32(SOCK_CLOEXEC.rawValue), 0)
            guard fd >= 0 else { throw .system(operation: "socket for", address: address.description, errno: errno) }
            var one: Int32 = 1
            _ = setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, socklen_t(MemoryLayout<Int32>.size))
            guard Glibc.bind(fd, info.pointee.ai_addr, info.pointee.ai_addrlen) == 0 else {
                let code = errno
                Glibc.close(fd)
                if code == EADDRINUSE { throw .addressInUse(address.description) }
                throw .system(operation: "bind", address: address.description, errno: code)
            }
            fileDescriptor = fd
        }
        guard Glibc.listen(fileDescriptor, Self.backlog) == 0 else {
            let code = errno
            Glibc.close(fileDescriptor)
            throw .system(operation: "listen on", address: address.description, errno: code)
        }
    }

    /// The TCP port actually bound (useful after binding port 0).
    public var boundPort: UInt16? {
        guard case .tcp = address else { return nil }
        var storage = sockaddr_storage()
        var length = socklen_t(MemoryLayout<sockaddr_storage>.size)
        let ok = withUnsafeMutablePointer(to: &storage) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(fileDescriptor, $0, &length) == 0 }
        }
        guard ok else { return nil }
        return withUnsafeBytes(of: &storage) { raw in
            // sin_port and sin6_port both sit at offset 2, in network order.
            UInt16(bigEndian: raw.load(fromByteOffset: 2, as: UInt16.self))
        }
    }

    /// Waits for the next connection. Throws once the listener is shut down.
    public func accept() throws(SocketError) -> Socket {
        while true {
            let fd = Glibc.accept(fileDescriptor, nil, nil)
            if fd >= 0 {
                _ = fcntl(fd, F_SETFD, FD_CLOEXEC)
                if case .tcp = address {
                    var one: Int32 = 1
                    _ = setsockopt(fd, Int32(IPPROTO_TCP), TCP_NODELAY, &one, socklen_t(MemoryLayout<Int32>.size))
                }
                let socket = Socket(adopting: fd, peer: address.description)
                // TCP sizes its buffers itself (autotuning, which a fixed SO_SNDBUF would turn off).
                if case .unix = address { socket.enlargeSendBuffer() }
                return socket
            }
            switch errno {
            case EINTR, ECONNABORTED: continue
            case EMFILE, ENFILE, ENOBUFS, ENOMEM:
                // Out of descriptors: back off instead of spinning.
                usleep(10_000)
                continue
            default:
                throw .system(operation: "accept on", address: address.description, errno: errno)
            }
        }
    }

    /// Stops accepting: wakes a blocked `accept` and removes a Unix socket path.
    public func close() {
        _ = Glibc.shutdown(fileDescriptor, Int32(SHUT_RDWR))
        if case .unix(let path) = address { unlink(path) }
    }

    deinit { Glibc.close(fileDescriptor) }
}
