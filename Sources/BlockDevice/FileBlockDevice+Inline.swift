#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif
import Synchronization

/// A READ or WRITE that the page cache can satisfy without waiting costs a
/// copy, less than handing it to a worker thread, so the server's
/// connection thread runs it on the spot. Whatever might wait for the disk
/// (a page-cache miss, write-back throttling, block allocation, FUA) is left
/// to worker threads, where one slow request does not hold up the ones
/// behind it. Which requests may run here is the device's `InlinePolicy`;
/// on a memory file system that is every one, FUA and FLUSH included
/// (`flushesAtOnce`), since fdatasync there has no disk to wait for.
extension FileBlockDevice: AsynchronousBlockDevice {
    public func startRead(
        at offset: UInt64, into buffer: UnsafeMutableRawBufferPointer,
        completion: @escaping @Sendable (AsynchronousOutcome) -> Void
    ) -> Bool {
        guard !buffer.isEmpty else { return false }
        return start(.read, count: buffer.count, completion: completion) { () throws(BlockDeviceError) in
            try read(at: offset, into: buffer)
        } withoutWaiting: {
            (LinuxSystem.read(fd, into: buffer, at: offset, flags: LinuxSystem.rwfNowait), errno)
        }
    }

    public func startWrite(
        at offset: UInt64, from buffer: UnsafeRawBufferPointer, fua: Bool,
        completion: @escaping @Sendable (AsynchronousOutcome) -> Void
    ) -> Bool {
        // FUA waits for the disk, unless there is none.
        guard !fua || flushesAtOnce, !isReadOnly, !buffer.isEmpty else { return false }
        return start(.write, count: buffer.count, completion: completion) { () throws(BlockDeviceError) in
            try write(at: offset, from: buffer, fua: fua)
        } withoutWaiting: {
            // Only under `.nowait`, which has a disk, so never with FUA.
            precondition(!fua)
            return (LinuxSystem.write(fd, from: buffer, at: offset, flags: LinuxSystem.rwfNowait), errno)
        }
    }

    /// On a memory file system fdatasync has nothing to wait for.
    public var flushesAtOnce: Bool {
        if case .always = inlinePolicy { return true }
        return false
    }

    /// Runs a request of `count` bytes here as the inline policy allows:
    /// `synchronously` under `.always`; under `.nowait`, `withoutWaiting` (a
    /// RWF_NOWAIT call, giving its result and errno) while the kernel takes
    /// the flag. False, for the synchronous path, otherwise.
    private func start(
        _ direction: NowaitSupport.Direction, count: Int, completion: @Sendable (AsynchronousOutcome) -> Void,
        synchronously: () throws(BlockDeviceError) -> Void, withoutWaiting: () -> (Int, Int32)
    ) -> Bool {
        switch inlinePolicy {
        case .never:
            return false
        case .always:
            do throws(BlockDeviceError) {
                try synchronously()
                completion(.done)
            } catch {
                completion(.failed(error))
            }
            return true
        case .nowait(let support):
            guard support.allows(direction) else { return false }
            let (done, code) = withoutWaiting()
            // Anything short of the whole request (partly cached, an error) is
            // left to the synchronous path, which finishes or reports it; a
            // partly written range is rewritten there with the same bytes.
            guard done == count else {
                if done < 0, LinuxSystem.refusesNowait(code) { support.refuse(direction) }
                return false
            }
            completion(.done)
            return true
        }
    }
}

/// Which READs and WRITEs (without FUA) a `FileBlockDevice` runs on the
/// caller's thread: decided once, when the file is opened.
enum InlinePolicy: Sendable {
    /// Every one: a regular file on a memory file system (tmpfs, ramfs),
    /// where every copy is a memory copy.
    case always
    /// Those the page cache satisfies: reads through
    /// `preadv2(RWF_NOWAIT)`, which fails with EAGAIN instead of waiting for
    /// the disk; writes through `pwritev2(RWF_NOWAIT)` where the kernel
    /// takes it for buffered writes (ext4 does not), else on workers.
    case nowait(NowaitSupport)
    /// None: with `threaded`, or with O_DIRECT, where every request goes
    /// to the disk.
    case never

    /// The policy for `fd`, opened with O_DIRECT if `direct`.
    init(_ fd: Int32, regularFile: Bool, direct: Bool, threaded: Bool) {
        if threaded || direct {
            self = .never
        } else if regularFile && LinuxSystem.isInMemoryFileSystem(fd) {
            self = .always
        } else {
            self = .nowait(NowaitSupport())
        }
    }
}

/// What the kernel has said about RWF_NOWAIT on one file: learnt from the
/// first refusal, so unsupported calls are not repeated per request.
final class NowaitSupport: Sendable {
    enum Direction: UInt8 {
        case read = 1
        case write = 2
    }

    /// The directions refused so far, as a set of `Direction` bits.
    private let refused = Atomic<UInt8>(0)

    func allows(_ direction: Direction) -> Bool { refused.load(ordering: .relaxed) & direction.rawValue == 0 }
    func refuse(_ direction: Direction) { refused.bitwiseOr(direction.rawValue, ordering: .relaxed) }

    /// Whether cachestat(2) was refused (`FileBlockDevice.splicedRange`):
    /// kernels before 6.5 have none, so it is not asked again.
    private let cacheQueriesRefused = Atomic<Bool>(false)

    var allowsCacheQueries: Bool { !cacheQueriesRefused.load(ordering: .relaxed) }
    func refuseCacheQueries() { cacheQueriesRefused.store(true, ordering: .relaxed) }
}
