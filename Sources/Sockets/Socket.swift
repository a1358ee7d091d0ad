#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif

/// A connected stream socket. Owns its file descriptor and closes it on
/// deinit. One thread may read while others write: the kernel serialises
/// each call, and callers serialise whole messages themselves.
public final class Socket: Sendable {
    public let fileDescriptor: Int32
    public let peerDescription: String

    public init(adopting fd: Int32, peer: String) {
        self.fileDescriptor = fd
        self.peerDescription = peer
    }

    deinit { Glibc.close(fileDescriptor) }

    /// Reads what is available, up to `buffer.count` bytes; 0 means the peer closed.
    public func read(into buffer: UnsafeMutableRawBufferPointer) throws(SocketError) -> Int {
        while true {
            let count = Glibc.read(fileDescriptor, buffer.baseAddress, buffer.count)
            if count >= 0 { return count }
            if errno == EINTR { continue }
            if errno == EAGAIN || errno == EWOULDBLOCK { throw .timedOut }
            throw .system(operation: "read from", address: peerDescription, errno: errno)
        }
    }

    /// Reads exactly `buffer.count` bytes, or throws `.connectionClosed`.
    public func readExactly(into buffer: UnsafeMutableRawBufferPointer) throws(SocketError) {
        var done = 0
        while done < buffer.count {
            let count = try read(into: UnsafeMutableRawBufferPointer(rebasing: buffer[done...]))
            guard count > 0 else { throw .connectionClosed }
            done += count
        }
    }

    /// Writes every byte of `buffer`.
    public func writeAll(_ buffer: UnsafeRawBufferPointer) throws(SocketError) {
        var done = 0
        while done < buffer.count {
            // MSG_NOSIGNAL: a peer that went away is an error here, not SIGPIPE.
            let count = send(fileDescriptor, buffer.baseAddress! + done, buffer.count - done, Int32(MSG_NOSIGNAL))
            if count < 0 {
                if errno == EINTR { continue }
                if errno == EPIPE || errno == ECONNRESET { throw .connectionClosed }
                if errno == EAGAIN || errno == EWOULDBLOCK { throw .timedOut }
                throw .system(operation: "write to", address: peerDescription, errno: errno)
            }
            done += count
        }
    }

    /// Writes as much of `buffer` as fits without blocking; returns the
    /// number of bytes written, 0 if the socket's buffer is full.
    public func writeAvailable(_ buffer: UnsafeRawBufferPointer) throws(SocketError) -> Int {
        guard !buffer.isEmpty else { return 0 }
        while true {
            let count = send(fileDescriptor, buffer.baseAddress!, buffer.count, Int32(MSG_NOSIGNAL) | Int32(MSG_DONTWAIT))
            if count >= 0 { return count }
            if errno == EINTR { continue }
            if errno == EAGAIN || errno == EWOULDBLOCK { return 0 }
            if errno == EPIPE || errno == ECONNRESET { throw .connectionClosed }
            throw .system(operation: "write to", address: peerDescription, errno: errno)
        }
    }

    /// Sends `count` bytes of the file `source` from `offset` on (sendfile(2)):
    /// the kernel hands the page cache's pages to the socket, with no copy
    /// through user memory. Blocks until all are sent, or the send timeout
    /// (SO_SNDTIMEO) passes (`.timedOut`); a file shorter than the range
    /// is `.system` with EIO, since the bytes promised cannot follow.
    public func sendFile(_ source: Int32, offset: Int64, count: Int) throws(SocketError) {
        var position = off_t(offset)
        var left = count
        while left > 0 {
            let sent = sendfile(fileDescriptor, source, &position, left)
            if sent > 0 {
                left -= sent
                continue
            }
            if sent == 0 { throw .system(operation: "sendfile to", address: peerDescription, errno: EIO) }
            if errno == EINTR { continue }
            if errno == EPIPE || errno == ECONNRESET { throw .connectionClosed }
            if errno == EAGAIN || errno == EWOULDBLOCK { throw .timedOut }
            throw .system(operation: "sendfile to", address: peerDescription, errno: errno)
        }
    }

    public func writeAll(_ bytes: [UInt8]) throws(SocketError) {
        var failure: SocketError?
        bytes.withUnsafeBytes { raw in
            do throws(SocketError) { try writeAll(raw) } catch { failure = error }
        }
        if let failure { throw failure }
    }

    /// Ends both directions, waking any thread blocked reading.
    public func shutdown() {
        _ = Glibc.shutdown(fileDescriptor, Int32(SHUT_RDWR))
    }

    /// Sets how long a read or write may block before failing with `.timedOut`; nil waits forever.
    public func setTimeout(seconds: Double?) {
        setTimeout(SO_RCVTIMEO, seconds: seconds)
        setTimeout(SO_SNDTIMEO, seconds: seconds)
    }

    /// Sets SO_RCVTIMEO or SO_SNDTIMEO; nil (zero) waits forever.
    func setTimeout(_ option: Int32, seconds: Double?) {
        var tv = timeval()
        if let seconds {
            tv.tv_sec = Int(seconds)
            tv.tv_usec = Int((seconds - Double(Int(seconds))) * 1_000_000)
        }
        _ = setsockopt(fileDescriptor, SOL_SOCKET, option, &tv, socklen_t(MemoryLayout<timeval>.size))
    }

    /// The peer's process credentials (SO_PEERCRED), for Unix sockets.
    public func peerCredentials() -> (pid: Int32, uid: UInt32, gid: UInt32)? {
        // struct ucred { pid_t pid; uid_t uid; gid_t gid; }, which Glibc
        // only declares under _GNU_SOURCE.
        var cred: (pid: Int32, uid: UInt32, gid: UInt32) = (0, 0, 0)
        var length = socklen_t(12)
        guard getsockopt(fileDescriptor, SOL_SOCKET, SO_PEERCRED, &cred, &length) == 0 else { return nil }
        return cred
    }

    /// Connects to `address`.
    public static func connect(to address: SocketAddress) throws(SocketError) -> Socket {
        switch address {
        case .unix(let path):
            let fd = Glibc.socket(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
            guard fd >= 0 else { throw .system(operation: "socket for", address: address.description, errno: errno) }
            var addr = try UnixAddress(path: path)
            let result = addr.withSockaddr { Glibc.connect(fd, $0, $1) }
            guard result == 0 else {
                let code = errno
                Glibc.close(fd)
                throw .system(operation: "connect to", address: address.description, errno: code)
            }
            let socket = Socket(adopting: fd, peer: address.description)
            socket.enlargeSendBuffer()
            return socket
        case .tcp(let host, let port):
            var hints = addrinfo()
            hints.ai_socktype = Int32(SOCK_STREAM.rawValue)
            var list: UnsafeMutablePointer<addrinfo>?
            guard getaddrinfo(host, String(port), &hints, &list) == 0, let first = list else {
                throw .badAddress(address.description, "cannot resolve host")
            }
            defer { freeaddrinfo(list) }
            var lastError: Int32 = 0
            var entry: UnsafeMutablePointer<addrinfo>? = first
            while let info = entry {
                let fd = Glibc.socket(info.pointee.ai_family, info.pointee.ai_socktype | Int32(SOCK_CLOEXEC.rawValue), 0)
                if fd >= 0 {
                    if Glibc.connect(fd, info.pointee.ai_addr, info.pointee.ai_addrlen) == 0 {
                        var one: Int32 = 1
                        _ = setsockopt(fd, Int32(IPPROTO_TCP), TCP_NODELAY, &one, socklen_t(MemoryLayout<Int32>.size))
                        return Socket(adopting: fd, peer: address.description)
                    }
                    lastError = errno
                    Glibc.close(fd)
                } else {
                    lastError = errno
                }
                entry = info.pointee.ai_next
            }
            throw .system(operation: "connect to", address: address.description, errno: lastError)
        }
    }
}

/// A `sockaddr_un` for a path, checked for length.
struct UnixAddress {
    var storage = sockaddr_un()

    init(path: String) throws(SocketError) {
        let bytes = Array(path.utf8)
        guard bytes.count <= SocketAddress.maxUnixPathLength else {
            throw .badAddress(path, "socket path longer than \(SocketAddress.maxUnixPathLength) bytes")
        }
        storage.sun_family = sa_family_t(AF_UNIX)
        // SAFETY: sun_path holds 108 bytes; at most 107 are copied and the rest stay zero.
        withUnsafeMutableBytes(of: &storage.sun_path) { raw in
            raw.copyBytes(from: bytes)
        }
    }

    mutating func withSockaddr<T>(_ body: (UnsafePointer<sockaddr>, socklen_t) -> T) -> T {
        let length = socklen_t(MemoryLayout<sockaddr_un>.size)
        return withUnsafePointer(to: &storage) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { body($0, length) }
        }
    }
}
