import BlockDevice
import NBDProtocol

/// One transmission request, for `NBDConnection.perform(_:)` and
/// `RemoteBlockDevice.perform(_:)`. Buffers are borrowed: the caller keeps
/// them valid, and does not touch a read buffer, until `perform` returns.
public enum NBDOperation {
    /// NBD_CMD_READ of `buffer.count` bytes at `offset`. Holes read as zeroes.
    case read(offset: UInt64, into: UnsafeMutableRawBufferPointer)
    /// NBD_CMD_WRITE of `buffer` at `offset`; with `fua`, NBD_CMD_FLAG_FUA.
    case write(offset: UInt64, from: UnsafeRawBufferPointer, fua: Bool)
    /// NBD_CMD_FLUSH.
    case flush
    /// NBD_CMD_TRIM; with `fua`, NBD_CMD_FLAG_FUA.
    case trim(offset: UInt64, length: UInt32, fua: Bool)
    /// NBD_CMD_WRITE_ZEROES with NBD_CMD_FLAG_FUA, NBD_CMD_FLAG_NO_HOLE and
    /// NBD_CMD_FLAG_FAST_ZERO as `flags` says.
    case writeZeroes(offset: UInt64, length: UInt32, flags: ZeroFlags)

    var command: Command {
        switch self {
        case .read: .read
        case .write: .write
        case .flush: .flush
        case .trim: .trim
        case .writeZeroes: .writeZeroes
        }
    }

    var offset: UInt64 {
        switch self {
        case .read(let offset, _), .write(let offset, _, _), .trim(let offset, _, _), .writeZeroes(let offset, _, _): offset
        case .flush: 0
        }
    }

    /// Bytes the request covers; `nil` when the buffer is too large for the
    /// protocol's 32-bit length field.
    var length: UInt32? {
        switch self {
        case .read(_, let buffer): UInt32(exactly: buffer.count)
        case .write(_, let buffer, _): UInt32(exactly: buffer.count)
        case .flush: 0
        case .trim(_, let length, _), .writeZeroes(_, let length, _): length
        }
    }

    /// Payload bytes sent after the request header (a WRITE's data).
    var inlinePayloadCount: Int {
        if case .write(_, let buffer, _) = self { buffer.count } else { 0 }
    }

    var flags: CommandFlags {
        var flags: CommandFlags = []
        switch self {
        case .read, .flush:
            break
        case .write(_, _, let fua), .trim(_, _, let fua):
            if fua { flags.insert(.fua) }
        case .writeZeroes(_, _, let zero):
            if zero.contains(.fua) { flags.insert(.fua) }
            if zero.contains(.noHole) { flags.insert(.noHole) }
            if zero.contains(.fast) { flags.insert(.fastZero) }
        }
        return flags
    }

    /// Why the server must not be sent this request, or nil if it may be:
    /// the checks the protocol puts on the client (advertised commands and
    /// flags, block size constraints, payload limit).
    func problem(for session: ClientSession, maxPayload: UInt32) -> String? {
        let flags = session.flags
        guard let length else { return "\(command) of more than 2^32-1 bytes" }
        switch self {
        case .flush:
            return flags.contains(.sendFlush) ? nil : "the export does not advertise NBD_FLAG_SEND_FLUSH"
        case .read, .write:
            guard length <= maxPayload else { return "\(command) of \(length) bytes exceeds the maximum payload \(maxPayload)" }
        case .trim:
            guard flags.contains(.sendTrim) else { return "the export does not advertise NBD_FLAG_SEND_TRIM" }
        case .writeZeroes:
            guard flags.contains(.sendWriteZeroes) else { return "the export does not advertise NBD_FLAG_SEND_WRITE_ZEROES" }
            if self.flags.contains(.fastZero), !flags.contains(.sendFastZero) {
                return "the export does not advertise NBD_FLAG_SEND_FAST_ZERO"
            }
        }
        if command != .read, flags.contains(.readOnly) { return "\(command) to a read-only export" }
        if self.flags.contains(.fua), !flags.contains(.sendFUA) { return "the export does not advertise NBD_FLAG_SEND_FUA" }
        guard length > 0 else { return "\(command) of zero bytes" }
        let minimum = UInt64(session.blockSize?.minimum ?? 1)
        guard offset % minimum == 0, UInt64(length) % minimum == 0 else {
            return "\(command) at \(offset)+\(length) is not aligned to the minimum block size \(minimum)"
        }
        guard offset.addingReportingOverflow(UInt64(length)).overflow == false else {
            return "\(command) at \(offset)+\(length) overflows"
        }
        return nil
    }
}
