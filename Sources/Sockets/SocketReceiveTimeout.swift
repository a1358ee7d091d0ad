#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif

extension Socket {
    /// Sets how long a read may block before failing with `.timedOut`
    /// (SO_RCVTIMEO only; writes keep theirs); nil waits forever.
    public func setReceiveTimeout(seconds: Double?) {
        setTimeout(SO_RCVTIMEO, seconds: seconds)
    }
}
