#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif

extension Socket {
    /// The send buffer asked for on every Unix stream socket, connected or
    /// accepted: room for a whole 1 MiB payload (the largest request or
    /// reply the chain sends) plus the next one's start. With the default
    /// (`net.core.wmem_default`, 208 KiB) a 1 MiB WRITE to the storage
    /// domain, or a 1 MiB READ reply to a consumer, goes out in five or more
    /// steps, the sender sleeping until the receiver has copied each one
    /// out, so the two processes run in lockstep instead of side by side
    /// (about 20% of 1 MiB throughput, `bench/CHAIN.md`). It is a ceiling,
    /// not an allocation: the kernel charges only the bytes queued.
    public static let unixSendBufferBytes: Int32 = 2 * 1024 * 1024

    /// Raises the socket's send buffer to `unixSendBufferBytes`. With
    /// CAP_NET_ADMIN (`SO_SNDBUFFORCE`) past `net.core.wmem_max`; otherwise
    /// as far as that limit allows (a sandboxed domain, which holds no
    /// capabilities, gets at most `wmem_max`). Failure only leaves the
    /// default, so it is not reported.
    func enlargeSendBuffer() {
        var bytes = Self.unixSendBufferBytes
        let size = socklen_t(MemoryLayout<Int32>.size)
        if setsockopt(fileDescriptor, SOL_SOCKET, SO_SNDBUFFORCE, &bytes, size) != 0 {
            _ = setsockopt(fileDescriptor, SOL_SOCKET, SO_SNDBUF, &bytes, size)
        }
    }

    /// The send buffer the kernel granted (SO_SNDBUF: twice what was asked,
    /// the kernel's allowance for its own bookkeeping).
    public var sendBufferBytes: Int {
        var bytes: Int32 = 0
        var size = socklen_t(MemoryLayout<Int32>.size)
        guard getsockopt(fileDescriptor, SOL_SOCKET, SO_SNDBUF, &bytes, &size) == 0 else { return 0 }
        return Int(bytes)
    }
}
