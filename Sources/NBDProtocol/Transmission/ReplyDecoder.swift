/// What the client learns from the server's reply stream.
public enum ReplyEvent: Sendable, Equatable {
    /// READ data for `cookie`, starting at `offset` bytes into the request.
    case data(cookie: UInt64, offset: Int, bytes: [UInt8])
    /// A READ range that reads as zeroes, relative to the request.
    case hole(cookie: UInt64, offset: Int, length: Int)
    /// The request is finished; `error` is nil on success. Always the last
    /// event for its cookie.
    case completed(cookie: UInt64, error: NBDErrorCode?, message: String)
}

/// Decodes and validates the server's replies (client side, transmission
/// phase). The server is untrusted: a reply to a cookie not in flight, a
/// bad magic, a chunk too long or outside its request, overlapping or
/// missing READ data, or a structured chunk that was not negotiated all
/// throw, and the connection must close. Nothing the server sends can make
/// the decoder buffer more than `maxPayload` plus a chunk's overhead.
public struct ReplyDecoder: Sendable {
    private struct InFlight: Sendable {
        var command: Command
        var offset: UInt64
        var length: UInt32
        /// Request-relative bytes already delivered (structured READ).
        var covered = ReadCoverage()
        var error: NBDErrorCode?
        var message = ""
    }

    public let structuredReplies: Bool
    public let maxPayload: UInt32
    private var input = InputBuffer()
    private var inFlight: [UInt64: InFlight] = [:]
    /// Events decoded from one message but not yet returned (data, then its completion).
    private var queued: [ReplyEvent] = []

    public init(structuredReplies: Bool, maxPayload: UInt32 = NBDLimits.maxPayload) {
        self.structuredReplies = structuredReplies
        self.maxPayload = maxPayload
    }

    /// Registers a request sent to the server, so its reply can be checked.
    /// - Precondition: `cookie` is not already in flight.
    public mutating func expect(_ request: RequestHeader) {
        precondition(inFlight[request.cookie] == nil, "cookie \(request.cookie) reused while in flight")
        inFlight[request.cookie] = InFlight(command: request.command, offset: request.offset, length: request.length)
    }

    /// Whether `cookie` awaits a reply.
    public func isInFlight(_ cookie: UInt64) -> Bool { inFlight[cookie] != nil }

    public var inFlightCount: Int { inFlight.count }

    public mutating func receive(_ bytes: some Sequence<UInt8>) { input.append(contentsOf: bytes) }
    public mutating func receive(_ bytes: UnsafeRawBufferPointer) { input.append(bytes) }

    /// The next event, or nil until more bytes arrive.
    public mutating func next() throws(NBDProtocolError) -> ReplyEvent? {
        while queued.isEmpty {
            guard input.count >= 4 else { return nil }
            let magic = input.peek(UInt32.self)
            let progressed: Bool
            switch magic {
            case NBDMagic.simpleReply: progressed = try decodeSimple()
            case NBDMagic.structuredReply: progressed = try decodeChunk()
            default: throw .badReplyMagic(magic)
            }
            if !progressed { return nil }
        }
        return queued.removeFirst()
    }

    /// Decodes one simple reply; false if it is not complete yet.
    private mutating func decodeSimple() throws(NBDProtocolError) -> Bool {
        guard input.count >= NBDMessageSize.simpleReply else { return false }
        let error = input.peek(UInt32.self, at: 4)
        let cookie = input.peek(UInt64.self, at: 8)
        guard let request = inFlight[cookie] else { throw .unknownCookie(cookie) }
        if request.command == .read {
            guard !structuredReplies else { throw .simpleReplyToStructuredRead(cookie: cookie) }
            if error == 0 {
                // The payload length is our own request's, already bounded.
                guard input.count >= NBDMessageSize.simpleReply + Int(request.length) else { return false }
                input.skip(upTo: NBDMessageSize.simpleReply)
                queued.append(.data(cookie: cookie, offset: 0, bytes: input.take(Int(request.length))))
                inFlight[cookie] = nil
                queued.append(.completed(cookie: cookie, error: nil, message: ""))
                return true
            }
        }
        input.skip(upTo: NBDMessageSize.simpleReply)
        inFlight[cookie] = nil
        queued.append(.completed(cookie: cookie, error: error == 0 ? nil : NBDErrorCode(rawValue: error), message: ""))
        return true
    }

    /// Decodes one structured reply chunk; false if it is not complete yet.
    private mutating func decodeChunk() throws(NBDProtocolError) -> Bool {
        guard input.count >= NBDMessageSize.structuredReplyHeader else { return false }
        let flags = ReplyFlags(rawValue: input.peek(UInt16.self, at: 4))
        let type = StructuredReplyType(rawValue: input.peek(UInt16.self, at: 6))
        let cookie = input.peek(UInt64.self, at: 8)
        let length = input.peek(UInt32.self, at: 16)
        guard structuredReplies else { throw .unexpectedStructuredReply(cookie: cookie) }
        guard inFlight[cookie] != nil else { throw .unknownCookie(cookie) }
        let limit = maxPayload + NBDLimits.maxChunkOverhead
        guard length <= limit else { throw .chunkTooLong(cookie: cookie, length: length, limit: limit) }
        guard input.count >= NBDMessageSize.structuredReplyHeader + Int(length) else { return false }
        input.skip(upTo: NBDMessageSize.structuredReplyHeader)
        let body = input.take(Int(length))
        // Taken out while it is updated, so its coverage is changed in place
        // rather than copied; put back below unless this chunk is the last.
        var request = inFlight.removeValue(forKey: cookie)!

        switch type {
        case .none:
            guard length == 0, flags.contains(.done) else {
                throw .malformedChunk(cookie: cookie, "NBD_REPLY_TYPE_NONE with data or without DONE")
            }
        case .offsetData, .offsetHole:
            guard request.command == .read else { throw .malformedChunk(cookie: cookie, "read chunk for \(request.command)") }
            let isData = type == .offsetData
            guard isData ? body.count > 8 : body.count == 12 else {
                throw .malformedChunk(cookie: cookie, "\(isData ? "data" : "hole") chunk of \(body.count) bytes")
            }
            let offset = body.bigEndian(UInt64.self, at: 0)
            let extent = isData ? UInt64(body.count - 8) : UInt64(body.bigEndian(UInt32.self, at: 8))
            let range = try relativeRange(offset, extent, in: request, cookie: cookie)
            guard request.covered.insert(range, requestLength: UInt64(request.length)) else {
                throw .overlappingReadChunks(cookie: cookie, offset: offset)
            }
            queued.append(
                isData
                    ? .data(cookie: cookie, offset: Int(range.lowerBound), bytes: Array(body[8...]))
                    : .hole(cookie: cookie, offset: Int(range.lowerBound), length: Int(extent)))
        case _ where type.isError:
            guard body.count >= 6 else { throw .malformedChunk(cookie: cookie, "error chunk of \(body.count) bytes") }
            let code = body.bigEndian(UInt32.self, at: 0)
            let messageLength = Int(body.bigEndian(UInt16.self, at: 4))
            guard code != 0 else { throw .malformedChunk(cookie: cookie, "error chunk with error 0") }
            let trailer = type == .errorOffset ? 8 : 0
            guard 6 + messageLength + trailer <= body.count else {
                throw .malformedChunk(cookie: cookie, "error message length \(messageLength) does not fit")
            }
            if type == .errorOffset {
                _ = try relativeRange(body.bigEndian(UInt64.self, at: 6 + messageLength), 1, in: request, cookie: cookie)
            }
            if request.error == nil {
                request.error = NBDErrorCode(rawValue: code)
                request.message = String(decoding: body[6..<(6 + messageLength)], as: UTF8.self)
            }
        default:
            throw .malformedChunk(cookie: cookie, "unknown chunk type \(type.rawValue)")
        }

        guard flags.contains(.done) else {
            inFlight[cookie] = request
            return true
        }
        if request.error == nil, request.command == .read {
            let received = request.covered.count
            guard received == UInt64(request.length) else {
                throw .incompleteRead(cookie: cookie, received: received, expected: UInt64(request.length))
            }
        }
        queued.append(.completed(cookie: cookie, error: request.error, message: request.message))
        return true
    }

    /// Maps an absolute export range to one relative to the request,
    /// rejecting empty ranges and ranges outside the request.
    private func relativeRange(_ offset: UInt64, _ extent: UInt64, in request: InFlight, cookie: UInt64)
        throws(NBDProtocolError) -> Range<UInt64>
    {
        let length = UInt64(request.length)
        guard extent > 0, offset >= request.offset, offset - request.offset <= length,
            extent <= length - (offset - request.offset)
        else { throw .readOutOfRange(cookie: cookie, offset: offset, length: extent) }
        let start = offset - request.offset
        return start..<(start + extent)
    }
}
