#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif

extension Socket {
    /// Sets how long a read may block before failing with `.timedOut`
    /// (SO_RCVTIMEO only; writes keep theirs); nil waits forever.
    public func setReceiveTimeout(seconds: Double?) {
        var tv = timeval()
        if let seconds {
            tv.tv_sec = Int(seconds)
            tv.tv_usec = Int((seconds - Double(Int(seconds))) * 1_000_000)
        }
        _ = setsockopt(fileDescriptor, SOL_SOCKET, SO_RCVTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
    }
}
