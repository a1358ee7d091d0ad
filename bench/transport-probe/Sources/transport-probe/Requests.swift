import NBDProtocol

/// What a decoded request asks the transport to do. Everything except READ
/// data is decided here, so both transports share one request path.
enum Work: Sendable {
    /// Send this reply (the request has been carried out, or was refused).
    case reply([UInt8])
    /// Send a READ reply: header then `length` bytes from `offset`.
    case read(cookie: UInt64, offset: UInt64, length: Int)
    /// NBD_CMD_DISCONNECT: stop reading, finish what is in flight.
    case disconnect
}

/// Validates `request` and carries out everything but READ.
func perform(_ request: IncomingRequest, session: NegotiatedSession, export: Export) -> Work {
    let header = request.header
    let structured = session.structuredReplies
    if let error = validate(header, payloadDiscarded: request.payloadDiscarded, session: session) {
        return .reply(ReplyEncoder.completion(
            cookie: header.cookie, error: error, message: "refused", command: header.command, structured: structured))
    }
    var failure: Int32?
    switch header.command {
    case .disconnect:
        return .disconnect
    case .read:
        return .read(cookie: header.cookie, offset: header.offset, length: Int(header.length))
    case .write:
        failure = request.payload.withUnsafeBytes {
            export.write($0, at: header.offset, fua: header.flags.contains(.fua))
        }
    case .flush:
        failure = export.flush()
    default:
        // Not advertised, so validate() has already refused it.
        failure = 0
    }
    return .reply(ReplyEncoder.completion(
        cookie: header.cookie, error: failure.map { _ in .ioError }, command: header.command,
        structured: structured))
}

/// Lays out a READ reply in `buffer` (exactly header + length bytes) and
/// reads the data after the header. Returns false if the export failed;
/// the caller then sends `readFailure` instead.
func fillReadReply(
    _ buffer: UnsafeMutableRawBufferPointer, cookie: UInt64, offset: UInt64, structured: Bool, export: Export
) -> Bool {
    let headerLength = ReplyEncoder.readReplyHeaderLength(structured: structured)
    let length = buffer.count - headerLength
    ReplyEncoder.encodeReadReplyHeader(
        into: buffer, cookie: cookie, offset: offset, length: UInt32(length), structured: structured)
    return export.read(into: UnsafeMutableRawBufferPointer(rebasing: buffer[headerLength...]), at: offset) == nil
}

func readFailure(cookie: UInt64, structured: Bool) -> [UInt8] {
    ReplyEncoder.completion(cookie: cookie, error: .ioError, message: "read failed", command: .read, structured: structured)
}
