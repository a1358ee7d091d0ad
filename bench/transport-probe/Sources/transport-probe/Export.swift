#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif
import NBDProtocol

/// The one export both servers serve: either anonymous memory (copies only,
/// the best case for an event loop) or a file read and written with
/// pread/pwrite (the realistic case: every call may block).
final class Export: @unchecked Sendable {
    // SAFETY: `memory` (when set) is a private allocation of `size` bytes that
    // lives as long as the process; concurrent requests may overlap, exactly
    // as they may on a disk, and the probe never checks the data.
    private let memory: UnsafeMutableRawPointer?
    private let fd: Int32
    let size: UInt64
    let kind: String

    init(memorySize: UInt64) {
        size = memorySize
        kind = "memory"
        fd = -1
        let pointer = UnsafeMutableRawPointer.allocate(byteCount: Int(memorySize), alignment: 4096)
        // Touch every page so no request pays for a first fault.
        memset(pointer, 0, Int(memorySize))
        memory = pointer
    }

    init(filePath: String, size: UInt64) {
        self.size = size
        kind = "file"
        memory = nil
        fd = open(filePath, O_RDWR | O_CREAT | O_CLOEXEC, 0o600)
        precondition(fd >= 0, "open \(filePath): errno \(errno)")
        precondition(ftruncate(fd, off_t(size)) == 0, "ftruncate: errno \(errno)")
        // Allocate every page up front (tmpfs), for the same reason as above.
        precondition(posix_fallocate(fd, 0, off_t(size)) == 0, "posix_fallocate failed")
    }

    var description: ExportDescription {
        ExportDescription(
            name: "probe", size: size, flags: [.sendFlush, .sendFUA],
            blockSize: BlockSizeConstraints(minimum: 1, preferred: 4096, maximum: NBDLimits.maxPayload))
    }

    /// Fills `buffer` from `offset`; returns an errno on failure.
    func read(into buffer: UnsafeMutableRawBufferPointer, at offset: UInt64) -> Int32? {
        if let memory {
            buffer.baseAddress!.copyMemory(from: memory + Int(offset), byteCount: buffer.count)
            return nil
        }
        var done = 0
        while done < buffer.count {
            let count = pread(fd, buffer.baseAddress! + done, buffer.count - done, off_t(offset) + off_t(done))
            if count < 0 {
                if errno == EINTR { continue }
                return errno
            }
            if count == 0 { return EIO }
            done += count
        }
        return nil
    }

    /// Stores `bytes` at `offset`; returns an errno on failure.
    func write(_ bytes: UnsafeRawBufferPointer, at offset: UInt64, fua: Bool) -> Int32? {
        if let memory {
            (memory + Int(offset)).copyMemory(from: bytes.baseAddress!, byteCount: bytes.count)
            return nil
        }
        var done = 0
        while done < bytes.count {
            let count = pwrite(fd, bytes.baseAddress! + done, bytes.count - done, off_t(offset) + off_t(done))
            if count < 0 {
                if errno == EINTR { continue }
                return errno
            }
            done += count
        }
        return fua ? flush() : nil
    }

    func flush() -> Int32? {
        guard memory == nil else { return nil }
        return fdatasync(fd) == 0 ? nil : errno
    }
}
