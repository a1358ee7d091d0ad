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
    public var payload: WritePayload
    /// True for a WRITE whose payload was too large to accept; it must be
    /// answered with an error.
    public var payloadDiscarded: Bool
}

/// Decodes the client's request stream (server side, transmission phase).
/// Payloads above `maxPayload` are skipped without being stored, so a
/// client cannot make the server allocate more than the limit per request.
public struct RequestDecoder: Sendable {
    public let maxPayload: UInt32
    /// Alignment of WRITE payload memory (a power of two): a device that
    /// needs aligned buffers (O_DIRECT) can then write from it in place.
    public let payloadAlignment: Int
    /// Where payload memory comes from; nil for malloc.
    public let payloadMemory: (any PayloadMemory)?
    private var input = InputBuffer()
    private var pending: RequestHeader?
    private var discardRemaining = 0

    public init(maxPayload: UInt32 = NBDLimits.maxPayload, payloadAlignment: Int = 64, payloadMemory: (any PayloadMemory)? = nil) {
        precondition(payloadAlignment > 0 && payloadAlignment & (payloadAlignment - 1) == 0, "alignment must be a power of two")
        self.maxPayload = maxPayload
        self.payloadAlignment = payloadAlignment
        self.payloadMemory = payloadMemory
    }

    public mutating func receive(_ bytes: some Sequence<UInt8>) { input.append(contentsOf: bytes) }
    public mutating func receive(_ bytes: UnsafeRawBufferPointer) { input.append(bytes) }

    /// Receives up to `maximum` bytes that `fill` writes straight into the
    /// decoder's input (a socket read); returns how many.
    public mutating func receive<E: Error>(upTo maximum: Int, _ fill: (UnsafeMutableRawBufferPointer) throws(E) -> Int) throws(E) -> Int {
        try input.receive(upTo: maximum, fill)
    }

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
                return IncomingRequest(header: header, payload: .empty, payloadDiscarded: false)
            }
            guard header.length <= maxPayload else {
                discardRemaining = Int(header.length) - input.skip(upTo: Int(header.length))
                return IncomingRequest(header: header, payload: .empty, payloadDiscarded: true)
            }
            pending = header
        }
        guard let header = pending, input.count >= Int(header.length) else { return nil }
        pending = nil
        let payload = WritePayload(count: Int(header.length), alignment: payloadAlignment, memory: payloadMemory)
        input.take(into: payload.fillableBytes)
        return IncomingRequest(header: header, payload: payload, payloadDiscarded: false)
    }
}

extension RequestDecoder {
    /// Bytes of a WRITE payload still to come: nonzero only when `next()`
    /// has decoded a WRITE header but not yet received all of its payload.
    /// A driver may then read those bytes straight into the payload with
    /// `completePendingWrite(reading:)` instead of passing them through
    /// `receive(_:)`, which saves copying large payloads.
    public var missingPayloadCount: Int {
        guard let pending else { return 0 }
        return max(0, Int(pending.length) - input.count)
    }

    /// Returns the pending WRITE: its payload is the bytes already received
    /// followed by `missingPayloadCount` bytes that `read` must place in the
    /// buffer it is given (the payload's own memory, so nothing is copied;
    /// filling it entirely, or throwing). After a throw the stream is out of
    /// step and the connection must close.
    /// - Precondition: `missingPayloadCount > 0`.
    public mutating func completePendingWrite<E: Error>(
        reading read: (UnsafeMutableRawBufferPointer) throws(E) -> Void
    ) throws(E) -> IncomingRequest {
        precondition(missingPayloadCount > 0, "no WRITE payload is pending")
        let header = pending!
        pending = nil
        let payload = WritePayload(count: Int(header.length), alignment: payloadAlignment, memory: payloadMemory)
        let memory = payload.fillableBytes
        let buffered = input.count
        input.take(into: UnsafeMutableRawBufferPointer(rebasing: memory[..<buffered]))
        try read(UnsafeMutableRawBufferPointer(rebasing: memory[buffered...]))
        return IncomingRequest(header: header, payload: payload, payloadDiscarded: false)
    }

    /// The WRITE whose header `next()` decoded while its payload is still
    /// arriving (`missingPayloadCount > 0`); nil otherwise.
    public var pendingWrite: RequestHeader? { missingPayloadCount > 0 ? pending : nil }

    /// Hands the pending WRITE to a driver that moves its payload itself,
    /// without payload memory (splice(2) from the socket into a file):
    /// `consume` gets the header and the payload bytes already received,
    /// and the driver must then take the other `missingPayloadCount` bytes
    /// (as counted before this call) straight from the stream. Decoding
    /// resumes after the payload. After a throw the stream is out of step
    /// and the connection must close.
    /// - Precondition: `missingPayloadCount > 0`.
    public mutating func takePendingWrite<E: Error>(
        _ consume: (RequestHeader, UnsafeRawBufferPointer) throws(E) -> Void
    ) throws(E) {
        precondition(missingPayloadCount > 0, "no WRITE payload is pending")
        let header = pending!
        pending = nil
        try input.consume(input.count) { (buffered) throws(E) in try consume(header, buffered) }
    }
}
