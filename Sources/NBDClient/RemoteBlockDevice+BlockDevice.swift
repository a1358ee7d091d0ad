#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif
import BlockDevice
import NBDProtocol

/// The `BlockDevice` methods: checks done locally with `BlockDeviceError`,
/// the rest through `perform(_:)` with NBD errors mapped.
extension RemoteBlockDevice {
    /// NBD_CMD_READ, split as needed.
    public func read(at offset: UInt64, into buffer: UnsafeMutableRawBufferPointer) throws(BlockDeviceError) {
        try checkRange(offset, UInt64(buffer.count))
        try run([.read(offset: offset, into: buffer)], "NBD_CMD_READ at \(offset)+\(buffer.count)")
    }

    /// NBD_CMD_WRITE, split as needed. FUA without NBD_FLAG_SEND_FUA is a
    /// write followed by NBD_CMD_FLUSH once it is answered.
    public func write(at offset: UInt64, from buffer: UnsafeRawBufferPointer, fua: Bool) throws(BlockDeviceError) {
        try checkRange(offset, UInt64(buffer.count))
        guard !isReadOnly else { throw .readOnly }
        let native = fua && flags.contains(.sendFUA)
        try run([.write(offset: offset, from: buffer, fua: native)], "NBD_CMD_WRITE at \(offset)+\(buffer.count)")
        if fua, !native { try flush() }
    }

    /// NBD_CMD_FLUSH. A server that does not advertise NBD_FLAG_SEND_FLUSH
    /// has no write cache to flush, so this then succeeds at once. See the
    /// type's documentation for what a flush after a reconnect proves.
    ///
    /// It covers only writes the server answered before it (doc/proto.md,
    /// NBD_CMD_FLUSH), so the FUA fallbacks above send it after their
    /// writes' replies, never beside them.
    public func flush() throws(BlockDeviceError) {
        guard flags.contains(.sendFlush) else { return }
        try run([.flush], "NBD_CMD_FLUSH")
    }

    /// NBD_CMD_TRIM, in pieces of at most `effectChunkSize`.
    public func trim(at offset: UInt64, length: UInt64, fua: Bool) throws(BlockDeviceError) {
        try checkRange(offset, length)
        guard !isReadOnly else { throw .readOnly }
        guard flags.contains(.sendTrim) else { throw .notSupported("the NBD server does not support NBD_CMD_TRIM") }
        let native = fua && flags.contains(.sendFUA)
        let operations = pieces(offset, length).map { NBDOperation.trim(offset: $0.offset, length: $0.length, fua: native) }
        try run(operations, "NBD_CMD_TRIM at \(offset)+\(length)")
        if fua, !native { try flush() }
    }

    /// NBD_CMD_WRITE_ZEROES, in pieces of at most `effectChunkSize`.
    public func writeZeroes(at offset: UInt64, length: UInt64, flags zeroFlags: ZeroFlags) throws(BlockDeviceError) {
        try checkRange(offset, length)
        guard !isReadOnly else { throw .readOnly }
        guard flags.contains(.sendWriteZeroes) else {
            throw .notSupported("the NBD server does not support NBD_CMD_WRITE_ZEROES")
        }
        if zeroFlags.contains(.fast), !flags.contains(.sendFastZero) {
            throw .notSupported("the NBD server does not support NBD_CMD_FLAG_FAST_ZERO")
        }
        var sent = zeroFlags
        let needsFlush = zeroFlags.contains(.fua) && !flags.contains(.sendFUA)
        if needsFlush { sent.remove(.fua) }
        let operations = pieces(offset, length).map { NBDOperation.writeZeroes(offset: $0.offset, length: $0.length, flags: sent) }
        try run(operations, "NBD_CMD_WRITE_ZEROES at \(offset)+\(length)")
        if needsFlush { try flush() }
    }

    private func pieces(_ offset: UInt64, _ length: UInt64) -> [(offset: UInt64, length: UInt32)] {
        stride(from: UInt64(0), to: length, by: Int(Self.effectChunkSize)).map { start in
            (offset + start, UInt32(min(Self.effectChunkSize, length - start)))
        }
    }

    private func run(_ operations: [NBDOperation], _ what: String) throws(BlockDeviceError) {
        do throws(NBDClientError) {
            try performAll(operations)
        } catch {
            throw blockDeviceError(error, what)
        }
    }

    /// Maps a client error to the `BlockDeviceError` a server of this
    /// device would pass on to its own clients.
    func blockDeviceError(_ error: NBDClientError, _ what: String) -> BlockDeviceError {
        switch error {
        case .server(let code, let message):
            let operation = message.isEmpty ? what : "\(what) (\(message))"
            switch code {
            case .permissionDenied: return isReadOnly ? .readOnly : .io(operation: operation, errno: EPERM)
            case .ioError: return .io(operation: operation, errno: EIO)
            case .outOfMemory: return .io(operation: operation, errno: ENOMEM)
            case .invalid: return .io(operation: operation, errno: EINVAL)
            case .noSpace: return .noSpace
            case .overflow: return .io(operation: operation, errno: EOVERFLOW)
            case .notSupported: return .notSupported(operation)
            case .shutdown: return .unavailable("\(what): the NBD server is shutting down")
            default: return .io(operation: "\(operation): unknown NBD error \(code.rawValue)", errno: EIO)
            }
        case .invalidRequest(let why):
            return .io(operation: "\(what): \(why)", errno: EINVAL)
        default:
            return .unavailable("\(what): \(error)")
        }
    }
}
