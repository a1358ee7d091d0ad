#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif

extension FileBlockDevice {
    /// Discards a range: punches a hole in a file, BLKDISCARD on a block
    /// device. Discarding is advisory, so storage that cannot do it leaves
    /// the data in place and reports success.
    public func trim(at offset: UInt64, length: UInt64, fua: Bool) throws(BlockDeviceError) {
        guard !isReadOnly else { throw .readOnly }
        try checkRange(offset, length)
        guard length > 0 else { return }
        if isBlockDevice {
            var range: (UInt64, UInt64) = (offset, length)
            if ioctl(fd, LinuxSystem.blkDiscard, &range) != 0, !LinuxSystem.isUnsupported(errno) {
                throw .io(operation: "discard \(path) at \(offset)+\(length)", errno: errno)
            }
        } else {
            let code = LinuxSystem.fallocate(
                fd, mode: LinuxSystem.fallocPunchHole | LinuxSystem.fallocKeepSize, offset: offset, length: length)
            if code != 0, !LinuxSystem.isUnsupported(code) {
                throw .io(operation: "punch a hole in \(path) at \(offset)+\(length)", errno: code)
            }
        }
        if fua { try flush() }
    }

    /// Zeroes a range by the cheapest means the storage offers, falling
    /// back to writing zero buffers unless `flags` has `.fast`.
    public func writeZeroes(at offset: UInt64, length: UInt64, flags: ZeroFlags) throws(BlockDeviceError) {
        guard !isReadOnly else { throw .readOnly }
        try checkRange(offset, length)
        guard length > 0 else { return }
        if try !zeroWithoutWriting(offset, length, flags) {
            guard !flags.contains(.fast) else {
                throw .notSupported("\(path) cannot zero \(flags.contains(.noHole) ? "without holes " : "")without writing")
            }
            try writeZeroBuffers(offset, length)
        }
        if flags.contains(.fua) { try flush() }
    }

    /// Tries the fast ways to zero; false when none applies here.
    private func zeroWithoutWriting(_ offset: UInt64, _ length: UInt64, _ flags: ZeroFlags) throws(BlockDeviceError) -> Bool {
        let punch = LinuxSystem.fallocPunchHole | LinuxSystem.fallocKeepSize
        if isBlockDevice {
            // On a block device, a punched hole is a discard that reads back
            // as zeroes, and the kernel never falls back to writing for it.
            if !flags.contains(.noHole), try attempt(punch, offset, length, "zero") { return true }
            if flags.contains(.fast) { return false }
            // BLKZEROOUT keeps the range allocated; the kernel may write zeroes.
            var range: (UInt64, UInt64) = (offset, length)
            guard ioctl(fd, LinuxSystem.blkZeroOut, &range) == 0 else {
                let code = errno
                if LinuxSystem.isUnsupported(code) { return false }
                throw .io(operation: "zero \(path) at \(offset)+\(length)", errno: code)
            }
            return true
        }
        if !flags.contains(.noHole), try attempt(punch, offset, length, "punch a hole in") { return true }
        return try attempt(LinuxSystem.fallocZeroRange | LinuxSystem.fallocKeepSize, offset, length, "zero")
    }

    /// One fallocate call: true if it worked, false if the mode is unsupported.
    private func attempt(_ mode: Int32, _ offset: UInt64, _ length: UInt64, _ verb: String) throws(BlockDeviceError) -> Bool {
        let code = LinuxSystem.fallocate(fd, mode: mode, offset: offset, length: length)
        if code == 0 { return true }
        if LinuxSystem.isUnsupported(code) { return false }
        if code == ENOSPC || code == EDQUOT { throw .noSpace }
        throw .io(operation: "\(verb) \(path) at \(offset)+\(length)", errno: code)
    }

    /// Writes zeroes in bounded pieces.
    private func writeZeroBuffers(_ offset: UInt64, _ length: UInt64) throws(BlockDeviceError) {
        let pieceSize = Int(min(length, UInt64(Self.bounceChunkSize)))
        guard let zeroes = AlignedMemory(count: pieceSize, alignment: directAlignment) else {
            throw .io(operation: "allocate a zero buffer of \(pieceSize) bytes", errno: ENOMEM)
        }
        zeroes.bytes.initializeMemory(as: UInt8.self, repeating: 0)
        var done: UInt64 = 0
        while done < length {
            let piece = Int(min(UInt64(pieceSize), length - done))
            try pwriteFully(UnsafeRawBufferPointer(rebasing: zeroes.bytes[..<piece]), at: offset + done)
            done += UInt64(piece)
        }
    }
}
