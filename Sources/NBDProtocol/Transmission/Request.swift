/// The fixed 28-byte header of a transmission request.
public struct RequestHeader: Sendable, Hashable {
    public var flags: CommandFlags
    public var command: Command
    public var cookie: UInt64
    public var offset: UInt64
    public var length: UInt32

    public init(flags: CommandFlags = [], command: Command, cookie: UInt64, offset: UInt64, length: UInt32) {
        self.flags = flags
        self.command = command
        self.cookie = cookie
        self.offset = offset
        self.length = length
    }

    /// Whether `length` bytes of payload follow this header on the wire.
    public var carriesPayload: Bool { command == .write }

    /// Appends the wire form of the header (not the payload).
    public func encode(into bytes: inout [UInt8]) {
        bytes.appendBigEndian(NBDMagic.request)
        bytes.appendBigEndian(flags.rawValue)
        bytes.appendBigEndian(command.rawValue)
        bytes.appendBigEndian(cookie)
        bytes.appendBigEndian(offset)
        bytes.appendBigEndian(length)
    }
}

/// A request as decoded by the server.
public struct IncomingRequest: Sendable, Hashable {
    public var header: RequestHeader
    /// The WRITE payload; empty for other commands, and for a WRITE whose
    /// length exceeds the payload limit (its bytes are skipped unread).
    public var payload: [UInt8]
    /// True for a WRITE whose payload was too large to accept; it must be
    /// answered with an error.
    public var payloadDiscarded: Bool
}

/// Decodes the client's request stream (server side, transmission phase).
/// Payloads above `maxPayload` are skipped without being stored, so a
/// client cannot make the server allocate more than the limit per request.
public struct RequestDecoder: Sendable {
    public let maxPayload: UInt32
    private var input = InputBuffer()
    private var pending: RequestHeader?
    private var discardRemaining = 0

    public init(maxPayload: UInt32 = NBDLimits.maxPayload) {
        self.maxPayload = maxPayload
    }

    public mutating func receive(_ bytes: some Sequence<UInt8>) { input.append(contentsOf: bytes) }
    public mutating func receive(_ bytes: UnsafeRawBufferPointer) { input.append(bytes) }

    /// Bytes received but not yet decoded.
    public var bufferedCount: Int { input.count }

    /// The next complete request, or nil until more bytes arrive. Throws
    /// when the stream is out of step (bad magic); the connection must close.
    public mutating func next() throws(NBDProtocolError) -> IncomingRequest? {
        if discardRemaining > 0 {
            discardRemaining -= input.skip(upTo: discardRemaining)
            if discardRemaining > 0 { return nil }
        }
        if pending == nil {
            guard input.count >= NBDMessageSize.request else { return nil }
            let magic = input.peek(UInt32.self)
            guard magic == NBDMagic.request else { throw .badRequestMagic(magic) }
            let header = RequestHeader(
                flags: CommandFlags(rawValue: input.peek(UInt16.self, at: 4)),
                command: Command(rawValue: input.peek(UInt16.self, at: 6)),
                cookie: input.peek(UInt64.self, at: 8),
                offset: input.peek(UInt64.self, at: 16),
                length: input.peek(UInt32.self, at: 24))
            input.skip(upTo: NBDMessageSize.request)
            guard header.carriesPayload else {
                return IncomingRequest(header: header, payload: [], payloadDiscarded: false)
            }
            guard header.length <= maxPayload else {
                discardRemaining = Int(header.length) - input.skip(upTo: Int(header.length))
                return IncomingRequest(header: header, payload: [], payloadDiscarded: true)
            }
            pending = header
        }
        guard let header = pending, input.count >= Int(header.length) else { return nil }
        pending = nil
        return IncomingRequest(header: header, payload: input.take(Int(header.length)), payloadDiscarded: false)
    }
}
