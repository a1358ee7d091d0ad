#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif

/// A regular file or a block device served as a `BlockDevice`: the storage
/// domain's backend. Reads and writes are positioned (pread/pwrite), so any
/// number of threads may use one instance at once. With O_DIRECT, requests
/// must be aligned to `minimumBlockSize`; unaligned caller buffers are
/// bounced through aligned memory.
public final class FileBlockDevice: BlockDevice {
    public let path: String
    public let size: UInt64
    public let isReadOnly: Bool
    public let capabilities: BlockDeviceCapabilities
    public let minimumBlockSize: UInt32
    /// True for a block device node, false for a regular file.
    public let isBlockDevice: Bool
    /// True when opened with O_DIRECT.
    public let isDirect: Bool
    let fd: Int32
    /// Which requests may run on the caller's thread (FileBlockDevice+Inline.swift).
    let inlinePolicy: InlinePolicy

    /// Largest piece of an unaligned O_DIRECT transfer bounced at once, and of
    /// the zero buffer written when zeroing must fall back to writes.
    static let bounceChunkSize = 1 << 20
    /// O_DIRECT alignment assumed for regular files: 4096 suits 512-byte and
    /// 4K-native disks alike.
    static let directFileAlignment: UInt32 = 4096

    /// Opens `path` (a regular file or a block device) read-write, or
    /// read-only with `readOnly`; `direct` bypasses the page cache (O_DIRECT);
    /// `threaded` (the default) keeps every request off the caller's thread;
    /// false runs those that need not wait inline (FileBlockDevice+Inline.swift).
    public init(path: String, readOnly: Bool = false, direct: Bool = false, threaded: Bool = true) throws(BlockDeviceError) {
        var flags = (readOnly ? O_RDONLY : O_RDWR) | O_CLOEXEC
        if direct { flags |= LinuxSystem.oDirect }
        let fd = open(path, flags)
        guard fd >= 0 else { throw .io(operation: "open \(path)", errno: errno) }
        var info = stat()
        guard fstat(fd, &info) == 0 else {
            let code = errno
            close(fd)
            throw .io(operation: "stat \(path)", errno: code)
        }
        let kind = info.st_mode & S_IFMT
        guard kind == S_IFREG || kind == S_IFBLK else {
            close(fd)
            throw .notSupported("\(path) is neither a regular file nor a block device")
        }
        self.fd = fd
        self.path = path
        self.isReadOnly = readOnly
        self.isDirect = direct
        self.isBlockDevice = kind == S_IFBLK
        self.inlinePolicy = InlinePolicy(fd, regularFile: kind == S_IFREG, direct: direct, threaded: threaded)

        var capabilities: BlockDeviceCapabilities = [.multiConnConsistent]
        if isBlockDevice {
            var bytes: UInt64 = 0
            var sectorSize: Int32 = 0
            guard ioctl(fd, LinuxSystem.blkGetSize64, &bytes) == 0,
                ioctl(fd, LinuxSystem.blkSectorSize, &sectorSize) == 0, sectorSize > 0
            else {
                let code = errno
                close(fd)
                throw .io(operation: "query the size of \(path)", errno: code)
            }
            // Discard and zero-out work in whole logical sectors, so the
            // sector is the unit of access even without O_DIRECT.
            minimumBlockSize = UInt32(sectorSize)
            size = bytes
            let queue = Self.sysfsQueue(of: info.st_rdev)
            if queue("rotational") == 1 { capabilities.insert(.rotational) }
            if !readOnly, queue("discard_max_bytes") ?? 1 > 0 { capabilities.insert(.trim) }
        } else {
            minimumBlockSize = direct ? Self.directFileAlignment : 1
            // With O_DIRECT a partial last block cannot be transferred.
            let fileSize = UInt64(info.st_size)
            size = fileSize - fileSize % UInt64(minimumBlockSize)
            if !readOnly, Self.canPunchHoles(fd, fileSize: fileSize) { capabilities.insert(.trim) }
        }
        if !readOnly {
            // Zeroing always works (falling back to writes), and honours
            // ZeroFlags.fast by failing rather than falling back.
            capabilities.formUnion([.flush, .writeZeroes, .fastZero])
        }
        self.capabilities = capabilities
    }

    deinit { close(fd) }

    /// Whether the file system punches holes: probed past the end of the
    /// file, where punching changes nothing.
    private static func canPunchHoles(_ fd: Int32, fileSize: UInt64) -> Bool {
        let code = LinuxSystem.fallocate(
            fd, mode: LinuxSystem.fallocPunchHole | LinuxSystem.fallocKeepSize, offset: fileSize, length: 4096)
        return !LinuxSystem.isUnsupported(code)
    }

    /// Reads queue attributes of a block device from sysfs (a partition's
    /// queue is its parent disk's).
    private static func sysfsQueue(of device: dev_t) -> (String) -> UInt64? {
        let device = UInt64(device)
        let major = ((device >> 8) & 0xfff) | ((device >> 32) & ~UInt64(0xfff))
        let minor = (device & 0xff) | ((device >> 12) & ~UInt64(0xff))
        let base = "/sys/dev/block/\(major):\(minor)"
        return { attribute in
            LinuxSystem.readSysfsInteger("\(base)/queue/\(attribute)")
                ?? LinuxSystem.readSysfsInteger("\(base)/../queue/\(attribute)")
        }
    }

    // MARK: Reading and writing

    public func read(at offset: UInt64, into buffer: UnsafeMutableRawBufferPointer) throws(BlockDeviceError) {
        try checkRange(offset, UInt64(buffer.count))
        guard buffer.count > 0 else { return }
        guard needsBounce(buffer.baseAddress!, count: buffer.count) else {
            return try preadFully(buffer, at: offset)
        }
        try checkDirectAlignment(offset, buffer.count)
        let bounce = try bounceBuffer(for: buffer.count)
        var done = 0
        while done < buffer.count {
            let piece = min(bounce.bytes.count, buffer.count - done)
            let chunk = UnsafeMutableRawBufferPointer(rebasing: bounce.bytes[..<piece])
            try preadFully(chunk, at: offset + UInt64(done))
            // SAFETY: both regions hold at least `piece` bytes and do not overlap.
            (buffer.baseAddress! + done).copyMemory(from: chunk.baseAddress!, byteCount: piece)
            done += piece
        }
    }

    public func write(at offset: UInt64, from buffer: UnsafeRawBufferPointer, fua: Bool) throws(BlockDeviceError) {
        guard !isReadOnly else { throw .readOnly }
        try checkRange(offset, UInt64(buffer.count))
        guard buffer.count > 0 else { return }
        if needsBounce(buffer.baseAddress!, count: buffer.count) {
            try checkDirectAlignment(offset, buffer.count)
            let bounce = try bounceBuffer(for: buffer.count)
            var done = 0
            while done < buffer.count {
                let piece = min(bounce.bytes.count, buffer.count - done)
                // SAFETY: both regions hold at least `piece` bytes and do not overlap.
                bounce.bytes.baseAddress!.copyMemory(from: buffer.baseAddress! + done, byteCount: piece)
                try pwriteFully(UnsafeRawBufferPointer(rebasing: bounce.bytes[..<piece]), at: offset + UInt64(done))
                done += piece
            }
        } else {
            try pwriteFully(buffer, at: offset)
        }
        if fua { try flush() }
    }

    public func flush() throws(BlockDeviceError) {
        guard fdatasync(fd) == 0 else { throw .io(operation: "fdatasync \(path)", errno: errno) }
    }

    /// pread until `buffer` is full, retrying short reads and EINTR.
    func preadFully(_ buffer: UnsafeMutableRawBufferPointer, at offset: UInt64) throws(BlockDeviceError) {
        // Reading nothing: the file shrank under us, the range no longer exists.
        try repeatUntilDone(buffer.count, at: offset, "read", nothingMeans: "unexpected end of file") { done in
            pread(fd, buffer.baseAddress! + done, buffer.count - done, off_t(offset) + off_t(done))
        }
    }

    /// pwrite until all of `buffer` is written, retrying short writes and EINTR.
    func pwriteFully(_ buffer: UnsafeRawBufferPointer, at offset: UInt64) throws(BlockDeviceError) {
        try repeatUntilDone(buffer.count, at: offset, "write", nothingMeans: "no progress") { done in
            pwrite(fd, buffer.baseAddress! + done, buffer.count - done, off_t(offset) + off_t(done))
        }
    }

    /// Calls `transfer` with the bytes done so far until `count` are done,
    /// retrying after a short transfer or EINTR; `verb` and `nothingMeans`
    /// say what failed when it moves nothing or fails.
    private func repeatUntilDone(
        _ count: Int, at offset: UInt64, _ verb: String, nothingMeans: String, _ transfer: (_ done: Int) -> Int
    ) throws(BlockDeviceError) {
        var done = 0
        while done < count {
            let moved = transfer(done)
            if moved > 0 {
                done += moved
            } else if moved == 0 {
                throw .io(operation: "\(verb) \(path) at \(offset + UInt64(done)) (\(nothingMeans))", errno: EIO)
            } else if errno != EINTR {
                let code = errno
                if code == ENOSPC || code == EDQUOT { throw .noSpace }
                throw .io(operation: "\(verb) \(path) at \(offset + UInt64(done))", errno: code)
            }
        }
    }

    // MARK: O_DIRECT alignment

    /// Alignment O_DIRECT demands of memory, offsets and lengths.
    var directAlignment: Int { max(Int(minimumBlockSize), 512) }

    private func needsBounce(_ address: UnsafeRawPointer, count: Int) -> Bool {
        isDirect && (Int(bitPattern: address) % directAlignment != 0)
    }

    func checkDirectAlignment(_ offset: UInt64, _ length: Int) throws(BlockDeviceError) {
        let alignment = UInt64(directAlignment)
        guard offset % alignment == 0, UInt64(length) % alignment == 0 else {
            throw .io(operation: "O_DIRECT access to \(path) at \(offset)+\(length) not aligned to \(alignment)", errno: EINVAL)
        }
    }

    func bounceBuffer(for count: Int) throws(BlockDeviceError) -> AlignedMemory {
        // A multiple of the alignment, so every piece stays aligned.
        let size = min(count, Self.bounceChunkSize)
        guard let memory = AlignedMemory(count: size, alignment: directAlignment) else {
            throw .io(operation: "allocate an aligned buffer of \(size) bytes", errno: ENOMEM)
        }
        return memory
    }
}
