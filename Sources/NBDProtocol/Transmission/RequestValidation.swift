/// Checks a request against the export and the negotiated session, before
/// the server touches any storage. Returns the NBD error to reply with, or
/// nil if the request may proceed. Errors follow proto.md's "Error values":
/// EINVAL for unknown commands and flags, misaligned or oversized requests
/// and reads past the end; ENOSPC for writes past the end; EPERM for
/// writes to a read-only export.
public func validate(_ request: RequestHeader, payloadDiscarded: Bool = false, session: NegotiatedSession) -> NBDErrorCode? {
    let export = session.export
    let flags = session.flags
    // NBD_CMD_FLAG_FUA "is valid for all commands, provided NBD_FLAG_SEND_FUA
    // has been negotiated, in which case the server MUST accept all commands
    // with this bit set"; clients are known to set it on reads and flushes.
    let fua: CommandFlags = flags.contains(.sendFUA) ? [.fua] : []
    let allowedFlags: CommandFlags
    switch request.command {
    case .read:
        allowedFlags = fua
    case .write:
        allowedFlags = fua
    case .flush:
        guard flags.contains(.sendFlush) else { return .invalid }
        guard request.offset == 0, request.length == 0 else { return .invalid }
        allowedFlags = fua
    case .trim:
        guard flags.contains(.sendTrim) else { return .invalid }
        allowedFlags = fua
    case .writeZeroes:
        guard flags.contains(.sendWriteZeroes) else { return .invalid }
        var allowed: CommandFlags = fua.union(.noHole)
        if flags.contains(.sendFastZero) { allowed.insert(.fastZero) }
        allowedFlags = allowed
    case .disconnect:
        return nil
    default:
        return .invalid
    }
    guard request.flags.isSubset(of: allowedFlags) else { return .invalid }

    let writes = request.command == .write || request.command == .writeZeroes || request.command == .trim
    if writes, export.isReadOnly { return .permissionDenied }
    if request.command == .flush { return nil }

    if request.command == .read || request.command == .write {
        guard !payloadDiscarded, request.length <= export.blockSize.maximum else { return .invalid }
    }
    guard request.length > 0 else { return .invalid }
    let minimum = UInt64(export.blockSize.minimum)
    guard request.offset % minimum == 0, UInt64(request.length) % minimum == 0 else { return .invalid }
    let (end, overflow) = request.offset.addingReportingOverflow(UInt64(request.length))
    guard !overflow, end <= export.size else {
        return request.command == .write || request.command == .writeZeroes ? .noSpace : .invalid
    }
    return nil
}
