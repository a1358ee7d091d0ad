/// How an operation started with `AsynchronousBlockDevice` ended.
public enum AsynchronousOutcome: Sendable {
    /// Done: the data is in place (READ) or written (WRITE).
    case done
    /// Failed for good; the error is the one the synchronous call would throw.
    case failed(BlockDeviceError)
    /// Not done, and nothing of it is to be kept: the caller performs it again
    /// with the synchronous method, from a thread that may block (the
    /// storage connection failed and needs the synchronous path's
    /// reconnect-and-retry, or a lock turned out to be taken).
    case redoSynchronously
}

/// A block device that can also start READs and WRITEs without blocking the
/// calling thread, so an NBD server's connection thread can keep reading
/// requests while earlier ones are in flight (the crypt volume over a remote
/// storage device), or finish them on the spot without handing them to
/// another thread (a file in the page cache).
///
/// Each `start` method either returns false, having done nothing (the
/// caller then uses the synchronous method), or returns true and calls
/// `completion` exactly once, on any thread, possibly before returning. The
/// buffer must stay valid and untouched until then. Completions must not
/// block: they may run on a thread that other requests' replies depend on.
public protocol AsynchronousBlockDevice: BlockDevice {
    /// Starts NBD_CMD_READ of `buffer.count` bytes at `offset`.
    func startRead(
        at offset: UInt64, into buffer: UnsafeMutableRawBufferPointer,
        completion: @escaping @Sendable (AsynchronousOutcome) -> Void
    ) -> Bool

    /// Starts NBD_CMD_WRITE of `buffer` at `offset`, durably with `fua`.
    func startWrite(
        at offset: UInt64, from buffer: UnsafeRawBufferPointer, fua: Bool,
        completion: @escaping @Sendable (AsynchronousOutcome) -> Void
    ) -> Bool
}
