#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif
import CSystemShims

// System interfaces the C library declares only under _GNU_SOURCE, which
// Swift's Glibc module does not see: flag values from <fcntl.h> and
// <linux/falloc.h>, block-device ioctl numbers from <linux/fs.h>, and
// fallocate(2) looked up at run time.
enum LinuxSystem {
    /// O_DIRECT from <asm/fcntl.h>; its value differs between architectures.
    #if arch(x86_64) || arch(i386)
    static let oDirect: Int32 = 0o40000
    #elseif arch(arm64) || arch(arm)
    static let oDirect: Int32 = 0o200000
    #else
    static let oDirect: Int32 = 0o40000
    #endif

    static let fallocKeepSize: Int32 = 0x01  // FALLOC_FL_KEEP_SIZE
    static let fallocPunchHole: Int32 = 0x02  // FALLOC_FL_PUNCH_HOLE
    static let fallocZeroRange: Int32 = 0x10  // FALLOC_FL_ZERO_RANGE

    static let blkGetSize64: UInt = 0x8008_1272  // BLKGETSIZE64: _IOR(0x12, 114, size_t)
    static let blkSectorSize: UInt = 0x1268  // BLKSSZGET: _IO(0x12, 104)
    static let blkDiscard: UInt = 0x1277  // BLKDISCARD: _IO(0x12, 119)
    static let blkZeroOut: UInt = 0x127f  // BLKZEROOUT: _IO(0x12, 127)

    private typealias FallocateFunction = @convention(c) (Int32, Int32, Int64, Int64) -> Int32

    private static let fallocateFunction: FallocateFunction? = {
        // SAFETY: RTLD_DEFAULT is the null handle; the symbol, when present,
        // is glibc's `int fallocate(int, int, off_t, off_t)` with 64-bit off_t.
        guard let symbol = dlsym(UnsafeMutableRawPointer(bitPattern: 0), "fallocate") else { return nil }
        return unsafeBitCast(symbol, to: FallocateFunction.self)
    }()

    /// fallocate(2): 0 on success, otherwise the errno (ENOSYS if the C library lacks it).
    static func fallocate(_ fd: Int32, mode: Int32, offset: UInt64, length: UInt64) -> Int32 {
        guard let function = fallocateFunction else { return ENOSYS }
        while true {
            if function(fd, mode, Int64(bitPattern: offset), Int64(bitPattern: length)) == 0 { return 0 }
            if errno != EINTR { return errno }
        }
    }

    /// RWF_NOWAIT from <linux/fs.h>: fail with EAGAIN rather than wait
    /// (for a page-cache miss, or write-back).
    static let rwfNowait: Int32 = 0x08

    /// One positioned read with RWF_* `flags` (preadv2(2)): the byte count,
    /// or -1 with errno set. EINTR is retried.
    static func read(_ fd: Int32, into buffer: UnsafeMutableRawBufferPointer, at offset: UInt64, flags: Int32) -> Int {
        while true {
            let count = bulkhead_pread_flags(fd, buffer.baseAddress, buffer.count, off_t(offset), flags)
            if count >= 0 || errno != EINTR { return count }
        }
    }

    /// One positioned write with RWF_* `flags` (pwritev2(2)), as `read`.
    static func write(_ fd: Int32, from buffer: UnsafeRawBufferPointer, at offset: UInt64, flags: Int32) -> Int {
        while true {
            let count = bulkhead_pwrite_flags(fd, buffer.baseAddress, buffer.count, off_t(offset), flags)
            if count >= 0 || errno != EINTR { return count }
        }
    }

    /// Whether an errno from a RWF_NOWAIT call means the file does not take
    /// the flag at all (old kernels said EINVAL), rather than "would wait".
    static func refusesNowait(_ code: Int32) -> Bool {
        isUnsupported(code) || code == EINVAL
    }

    /// Whether `fd` lives on a file system kept in memory (tmpfs, ramfs),
    /// where a read or write never waits for a disk.
    static func isInMemoryFileSystem(_ fd: Int32) -> Bool {
        let type = bulkhead_filesystem_type(fd)
        let tmpfsMagic = 0x0102_1994  // TMPFS_MAGIC, <linux/magic.h>
        let ramfsMagic = 0x8584_58f6  // RAMFS_MAGIC
        return type == tmpfsMagic || type == ramfsMagic
    }

    /// Whether a fallocate errno means "this mode is not available here"
    /// rather than a failure of the storage.
    static func isUnsupported(_ code: Int32) -> Bool {
        code == EOPNOTSUPP || code == ENOSYS || code == ENOTTY
    }

    /// Reads a small integer from a sysfs file, such as a queue attribute.
    static func readSysfsInteger(_ path: String) -> UInt64? {
        let fd = open(path, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { return nil }
        defer { close(fd) }
        var bytes = [UInt8](repeating: 0, count: 64)
        let count = bytes.withUnsafeMutableBytes { Glibc.read(fd, $0.baseAddress, $0.count) }
        guard count > 0 else { return nil }
        let text = String(decoding: bytes[..<count], as: UTF8.self)
        return UInt64(text.trimmingWhitespace)
    }
}

/// Memory aligned for O_DIRECT, freed on deinit.
final class AlignedMemory {
    let bytes: UnsafeMutableRawBufferPointer

    init?(count: Int, alignment: Int) {
        var pointer: UnsafeMutableRawPointer?
        guard posix_memalign(&pointer, alignment, max(count, 1)) == 0, let pointer else { return nil }
        bytes = UnsafeMutableRawBufferPointer(start: pointer, count: count)
    }

    deinit { free(bytes.baseAddress) }
}

extension String {
    var trimmingWhitespace: Substring {
        let isSpace: (Character) -> Bool = { $0 == " " || $0 == "\n" || $0 == "\t" || $0 == "\r" }
        guard let first = firstIndex(where: { !isSpace($0) }), let last = lastIndex(where: { !isSpace($0) }) else {
            return ""
        }
        return self[first...last]
    }
}
