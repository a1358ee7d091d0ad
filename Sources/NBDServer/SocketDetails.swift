#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif
import Sockets

/// Bounds how long one send may wait for the peer to make room (SO_SNDTIMEO)
/// without limiting how long reads wait: an idle client is fine, one that
/// stops reading its replies is not.
func setSendTimeout(_ socket: Socket, seconds: Double) {
    var value = timeval(tv_sec: Int(seconds), tv_usec: Int((seconds - Double(Int(seconds))) * 1_000_000))
    var none = timeval()
    _ = setsockopt(socket.fileDescriptor, SOL_SOCKET, SO_SNDTIMEO, &value, socklen_t(MemoryLayout<timeval>.size))
    _ = setsockopt(socket.fileDescriptor, SOL_SOCKET, SO_RCVTIMEO, &none, socklen_t(MemoryLayout<timeval>.size))
}

/// Who is on the other end, for logs: pid and uid over a Unix socket, the
/// address and port over TCP.
func peerDescription(of socket: Socket) -> String {
    var storage = sockaddr_storage()
    var length = socklen_t(MemoryLayout<sockaddr_storage>.size)
    let ok = withUnsafeMutablePointer(to: &storage) {
        $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getpeername(socket.fileDescriptor, $0, &length) == 0 }
    }
    guard ok else { return "unknown" }
    switch Int32(storage.ss_family) {
    case AF_UNIX:
        guard let credentials = socket.peerCredentials() else { return "unix" }
        return "pid \(credentials.pid) uid \(credentials.uid)"
    case AF_INET, AF_INET6:
        var host = [CChar](repeating: 0, count: Int(NI_MAXHOST))
        var service = [CChar](repeating: 0, count: Int(NI_MAXSERV))
        let result = withUnsafePointer(to: &storage) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                getnameinfo($0, length, &host, socklen_t(host.count), &service, socklen_t(service.count),
                    NI_NUMERICHOST | NI_NUMERICSERV)
            }
        }
        guard result == 0 else { return "tcp" }
        let hostText = String(decoding: host.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
        let portText = String(decoding: service.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
        return storage.ss_family == AF_INET6 ? "[\(hostText)]:\(portText)" : "\(hostText):\(portText)"
    default:
        return "unknown"
    }
}
