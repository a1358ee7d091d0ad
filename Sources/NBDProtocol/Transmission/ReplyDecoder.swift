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

/// READ data whose header the decoder has checked, and whose payload it
/// leaves to its caller to place (`ReplyDecoder.transfer`): the next
/// `remaining` bytes of the stream belong at `offset` in request `cookie`.
public struct DataTransfer: Sendable, Equatable {
    public let cookie: UInt64
    /// Where the next byte goes, relative to the start of the request.
    public fileprivate(set) var offset: Int
    /// Payload bytes still to come, buffered in the decoder or not.
    public fileprivate(set) var remaining: Int
}

/// Decodes and validates the server's replies (client side, transmission
/// phase). The server is untrusted: a reply to a cookie not in flight, a
/// bad magic, a chunk too long or outside its request, overlapping or
/// missing READ data, or a structured chunk that was not negotiated all
/// throw, and the connection must close. Nothing the server sends can make
/// the decoder buffer more than `maxPayload` plus a chunk's overhead.
public struct ReplyDecoder: Sendable {
    /// A request awaiting its reply. Plain data, with no reference inside,
    /// so the copies made at every reply retain nothing: with a coverage
    /// bitmap and a message string inside, they took 7.5 of the 67.5
    /// retains per 4 KiB READ in the crypt domain (`bench/CHAIN.md`,
    /// session 16). What few requests need lies beside the table
    /// (`splitReads`, `messages`), emptied when the request ends.
    private struct InFlight: Sendable {
        var command: Command
        var offset: UInt64
        var length: UInt32
        /// Request-relative bytes already delivered (structured READ),
        /// without double counting.
        var delivered: UInt64 = 0
        var error: NBDErrorCode?
    }

    public let structuredReplies: Bool
    public let maxPayload: UInt32
    /// Whether READ payloads are handed to the caller as transfers instead
    /// of `.data` events.
    public let transfersData: Bool
    private var input = InputBuffer()
    /// The transfer in progress. Kept apart from `openChunk` so that
    /// reading it, once per payload piece, copies no request state.
    private var open: DataTransfer?
    /// For a transfer of a structured chunk: the request, already updated
    /// for this chunk, and whether the chunk carries NBD_REPLY_FLAG_DONE.
    /// Nil for a simple reply, which the transfer completes.
    private var openChunk: (request: InFlight, done: Bool)?
    private var inFlight = CookieTable<InFlight>()
    /// Which bytes were delivered, for READs whose reply came in more than
    /// one chunk so far; the usual reply, one chunk with all of it, needs
    /// none.
    private var splitReads: [UInt64: ReadCoverage] = [:]
    /// The message of the first error chunk of a request, if it had one.
    private var messages: [UInt64: String] = [:]
    /// Events decoded from one message but not yet returned (data, then its completion).
    private var queued: [ReplyEvent] = []

    /// With `transfersData`, the payload of every READ data reply (a simple
    /// reply, or an NBD_REPLY_TYPE_OFFSET_DATA chunk) is not returned as a
    /// `.data` event: once its header is checked, `next()` returns nil and
    /// `transfer` says where the payload goes, so the caller can copy it
    /// (or read it from the socket) straight into the request's buffer.
    public init(structuredReplies: Bool, maxPayload: UInt32 = NBDLimits.maxPayload, transfersData: Bool = false) {
        self.structuredReplies = structuredReplies
        self.maxPayload = maxPayload
        self.transfersData = transfersData
    }

    /// Registers a request sent to the server, so its reply can be checked.
    /// - Precondition: `cookie` is not already in flight.
    public mutating func expect(_ request: RequestHeader) {
        precondition(!inFlight.contains(request.cookie), "cookie \(request.cookie) reused while in flight")
        inFlight.insert(InFlight(command: request.command, offset: request.offset, length: request.length), for: request.cookie)
    }

    /// Whether `cookie` awaits a reply.
    public func isInFlight(_ cookie: UInt64) -> Bool { inFlight.contains(cookie) }

    public var inFlightCount: Int { inFlight.count }

    public mutating func receive(_ bytes: some Sequence<UInt8>) { input.append(contentsOf: bytes) }
    public mutating func receive(_ bytes: UnsafeRawBufferPointer) { input.append(bytes) }

    /// Receives up to `maximum` bytes that `fill` writes straight into the
    /// decoder's input (a socket read); returns how many.
    public mutating func receive<E: Error>(upTo maximum: Int, _ fill: (UnsafeMutableRawBufferPointer) throws(E) -> Int) throws(E) -> Int {
        try input.receive(upTo: maximum, fill)
    }

    /// The READ payload to place before anything else is decoded, if any.
    public var transfer: DataTransfer? { open }

    /// Bytes of the transfer's payload already received (`receive`).
    public var bufferedTransferBytes: Int { open.map { min($0.remaining, input.count) } ?? 0 }

    /// Moves the next `destination.count` buffered payload bytes of the
    /// transfer into `destination`, or drops them if it is nil.
    /// - Precondition: a transfer is open and `count <= bufferedTransferBytes`.
    public mutating func takeTransferBytes(_ count: Int, into destination: UnsafeMutableRawBufferPointer?) throws(NBDProtocolError) {
        precondition(count >= 0 && count <= bufferedTransferBytes)
        if let destination {
            precondition(destination.count == count)
            input.take(into: destination)
        } else {
            input.skip(upTo: count)
        }
        try advanceTransfer(count)
    }

    /// Records that the caller read the transfer's next `count` payload
    /// bytes from the stream itself, without passing them to `receive`.
    /// - Precondition: a transfer is open, nothing is buffered, and
    ///   `count <= transfer.remaining`.
    public mutating func transferReceived(_ count: Int) throws(NBDProtocolError) {
        precondition(input.isEmpty && count >= 0 && count <= (open?.remaining ?? 0))
        try advanceTransfer(count)
    }

    private mutating func advanceTransfer(_ count: Int) throws(NBDProtocolError) {
        guard var current = open else { preconditionFailure("no transfer is open") }
        current.offset += count
        current.remaining -= count
        guard current.remaining == 0 else {
            open = current
            return
        }
        open = nil
        let cookie = current.cookie
        if let (request, done) = openChunk.take() {
            try endChunk(cookie, request, done: done)
        } else {
            queued.append(.completed(cookie: cookie, error: nil, message: ""))
        }
    }

    /// The next event, or nil until more bytes arrive (or while a transfer
    /// is open).
    public mutating func next() throws(NBDProtocolError) -> ReplyEvent? {
        while queued.isEmpty {
            guard open == nil else { return nil }
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
            if error == 0, transfersData, request.length > 0 {
                input.skip(upTo: NBDMessageSize.simpleReply)
                inFlight.removeValue(for: cookie)
                open = DataTransfer(cookie: cookie, offset: 0, remaining: Int(request.length))
                return true
            }
            if error == 0 {
                // The payload length is our own request's, already bounded.
                guard input.count >= NBDMessageSize.simpleReply + Int(request.length) else { return false }
                input.skip(upTo: NBDMessageSize.simpleReply)
                queued.append(.data(cookie: cookie, offset: 0, bytes: input.take(Int(request.length))))
                inFlight.removeValue(for: cookie)
                queued.append(.completed(cookie: cookie, error: nil, message: ""))
                return true
            }
        }
        input.skip(upTo: NBDMessageSize.simpleReply)
        inFlight.removeValue(for: cookie)
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
        guard inFlight.contains(cookie) else { throw .unknownCookie(cookie) }
        let limit = maxPayload + NBDLimits.maxChunkOverhead
        guard length <= limit else { throw .chunkTooLong(cookie: cookie, length: length, limit: limit) }
        if transfersData, type == .offsetData { return try openDataTransfer(cookie: cookie, flags: flags, length: length) }
        guard input.count >= NBDMessageSize.structuredReplyHeader + Int(length) else { return false }
        input.skip(upTo: NBDMessageSize.structuredReplyHeader)
        let body = input.take(Int(length))
        // Taken out while it is updated, so its coverage is changed in place
        // rather than copied; put back below unless this chunk is the last.
        var request = inFlight.removeValue(for: cookie)!

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
            guard cover(range, of: &request, cookie: cookie) else { throw .overlappingReadChunks(cookie: cookie, offset: offset) }
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
                if messageLength > 0 { messages[cookie] = String(decoding: body[6..<(6 + messageLength)], as: UTF8.self) }
            }
        default:
            throw .malformedChunk(cookie: cookie, "unknown chunk type \(type.rawValue)")
        }

        try endChunk(cookie, request, done: flags.contains(.done))
        return true
    }

    /// Puts the request back after a chunk, or ends it after the last one.
    private mutating func endChunk(_ cookie: UInt64, _ request: InFlight, done: Bool) throws(NBDProtocolError) {
        guard done else {
            inFlight.insert(request, for: cookie)
            return
        }
        splitReads[cookie] = nil
        let message = messages.removeValue(forKey: cookie) ?? ""
        if request.error == nil, request.command == .read {
            guard request.delivered == UInt64(request.length) else {
                throw .incompleteRead(cookie: cookie, received: request.delivered, expected: UInt64(request.length))
            }
        }
        queued.append(.completed(cookie: cookie, error: request.error, message: message))
    }

    /// Marks `range` of a READ delivered; false, changing nothing, if any
    /// byte of it already was. The usual reply, one chunk with all of it,
    /// is counted without a bitmap, as `ReadCoverage` counts it.
    private mutating func cover(_ range: Range<UInt64>, of request: inout InFlight, cookie: UInt64) -> Bool {
        let length = UInt64(request.length)
        if request.delivered == 0, UInt64(range.count) == length {
            request.delivered = length
            return true
        }
        guard request.delivered < length, splitReads[cookie, default: ReadCoverage()].insert(range, requestLength: length) else {
            return false
        }
        request.delivered += UInt64(range.count)
        return true
    }

    /// Checks an NBD_REPLY_TYPE_OFFSET_DATA chunk as soon as its offset has
    /// arrived, and opens a transfer for its payload; false if the offset
    /// has not arrived yet.
    private mutating func openDataTransfer(cookie: UInt64, flags: ReplyFlags, length: UInt32) throws(NBDProtocolError) -> Bool {
        guard var request = inFlight[cookie] else { throw .unknownCookie(cookie) }
        guard request.command == .read else { throw .malformedChunk(cookie: cookie, "read chunk for \(request.command)") }
        guard length > 8 else { throw .malformedChunk(cookie: cookie, "data chunk of \(length) bytes") }
        guard input.count >= NBDMessageSize.structuredReplyHeader + 8 else { return false }
        let offset = input.peek(UInt64.self, at: NBDMessageSize.structuredReplyHeader)
        let range = try relativeRange(offset, UInt64(length - 8), in: request, cookie: cookie)
        guard cover(range, of: &request, cookie: cookie) else { throw .overlappingReadChunks(cookie: cookie, offset: offset) }
        input.skip(upTo: NBDMessageSize.structuredReplyHeader + 8)
        inFlight.removeValue(for: cookie)
        open = DataTransfer(cookie: cookie, offset: Int(range.lowerBound), remaining: Int(length - 8))
        openChunk = (request, flags.contains(.done))
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
