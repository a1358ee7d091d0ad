#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif
import Synchronization

/// A READ or WRITE that the page cache can satisfy without waiting costs a
/// copy, less than handing it to a worker thread, so the server's
/// connection thread runs it on the spot. Whatever might wait for the disk
/// (a page-cache miss, write-back throttling, block allocation) is left to
/// worker threads, where one slow request does not hold up the ones behind
/// it:
/// - on a memory file system (tmpfs, ramfs) every copy is a memory copy;
/// - elsewhere, reads use `preadv2(RWF_NOWAIT)`, which fails with EAGAIN
///   instead of waiting for the disk; writes run inline only where the
///   kernel accepts `pwritev2(RWF_NOWAIT)` for buffered writes, else on
///   workers.
/// Never with O_DIRECT (every request goes to the disk) or `threaded`.
extension FileBlockDevice: AsynchronousBlockDevice {
    public func startRead(
        at offset: UInt64, into buffer: UnsafeMutableRawBufferPointer,
        completion: @escaping @Sendable (AsynchronousOutcome) -> Void
    ) -> Bool {
        guard !threaded, !isDirect, !buffer.isEmpty else { return false }
        if inMemoryFileSystem {
            runInline(completion) { () throws(BlockDeviceError) in try read(at: offset, into: buffer) }
            return true
        }
        guard nowait.allowsReads else { return false }
        let count = LinuxSystem.read(fd, into: buffer, at: offset, flags: LinuxSystem.rwfNowait)
        // A short read (partly cached) or any error is left, untouched, to
        // the synchronous path, which finishes or reports it.
        guard count == buffer.count else {
            if count < 0, LinuxSystem.refusesNowait(errno) { nowait.refuseReads() }
            return false
        }
        completion(.done)
        return true
    }

    public func startWrite(
        at offset: UInt64, from buffer: UnsafeRawBufferPointer, fua: Bool,
        completion: @escaping @Sendable (AsynchronousOutcome) -> Void
    ) -> Bool {
        // FUA waits for the disk.
        guard !threaded, !isDirect, !fua, !isReadOnly, !buffer.isEmpty else { return false }
        if inMemoryFileSystem {
            runInline(completion) { () throws(BlockDeviceError) in try write(at: offset, from: buffer, fua: false) }
            return true
        }
        guard nowait.allowsWrites else { return false }
        let count = LinuxSystem.write(fd, from: buffer, at: offset, flags: LinuxSystem.rwfNowait)
        // Rewriting a partly written range with the same bytes is harmless.
        guard count == buffer.count else {
            if count < 0, LinuxSystem.refusesNowait(errno) { nowait.refuseWrites() }
            return false
        }
        completion(.done)
        return true
    }

    private func runInline(
        _ completion: @Sendable (AsynchronousOutcome) -> Void, _ body: () throws(BlockDeviceError) -> Void
    ) {
        do throws(BlockDeviceError) {
            try body()
            completion(.done)
        } catch {
            completion(.failed(error))
        }
    }
}

/// What the kernel has said about RWF_NOWAIT on one file: learnt from the
/// first refusal, so unsupported calls are not repeated per request.
final class NowaitSupport: Sendable {
    private let readsRefused = Atomic(false)
    private let writesRefused = Atomic(false)

    var allowsReads: Bool { !readsRefused.load(ordering: .relaxed) }
    var allowsWrites: Bool { !writesRefused.load(ordering: .relaxed) }
    func refuseReads() { readsRefused.store(true, ordering: .relaxed) }
    func refuseWrites() { writesRefused.store(true, ordering: .relaxed) }
}
