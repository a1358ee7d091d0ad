/// What the server handshake asks its driver to do.
public enum ServerHandshakeEvent: Sendable, Equatable {
    /// Send these bytes to the client.
    case send([UInt8])
    /// Negotiation finished: serve `session`. Bytes the client sent after
    /// the final option are in `ServerHandshake.takeLeftover()`.
    case transmission(NegotiatedSession)
    /// Close the connection; the handshake failed or was aborted.
    case close(NBDProtocolError)
}

/// The outcome of a successful handshake, as the server sees it.
public struct NegotiatedSession: Sendable, Equatable {
    public var export: ExportDescription
    public var structuredReplies: Bool
    /// Transmission flags as sent to the client (`hasFlags` included).
    public var flags: TransmissionFlags

    public init(export: ExportDescription, structuredReplies: Bool) {
        self.export = export
        self.structuredReplies = structuredReplies
        self.flags = export.flags.union(.hasFlags).subtracting([.sendDF])
    }
}

/// The server side of fixed newstyle negotiation (proto.md, "Fixed newstyle
/// negotiation"), as a state machine that does no I/O: the driver sends
/// `greeting()`, then feeds every byte it receives to `receive(_:)` and acts
/// on the events in order.
public struct ServerHandshake: Sendable {
    private enum State: Sendable {
        case awaitingClientFlags
        case awaitingOption
        /// Skipping an oversized option's payload; answered once skipped.
        case discardingOption(OptionCode, remaining: UInt64)
        case finished
    }

    private let catalog: ExportCatalog
    private let offersStructuredReplies: Bool
    private var state: State = .awaitingClientFlags
    private var input = InputBuffer()
    private var clientFlags: ClientFlags = []
    private var structuredReplies = false
    private var optionsSeen = 0

    /// `offersStructuredReplies: false` answers NBD_OPT_STRUCTURED_REPLY
    /// with NBD_REP_ERR_UNSUP, which the spec lets a server do; the client
    /// then gets simple replies (proto.md, "Structured reply chunk message").
    public init(catalog: ExportCatalog, offersStructuredReplies: Bool = true) {
        self.catalog = catalog
        self.offersStructuredReplies = offersStructuredReplies
    }

    /// The 18 bytes the server sends as soon as a client connects.
    public func greeting() -> [UInt8] {
        var bytes: [UInt8] = []
        bytes.reserveCapacity(NBDMessageSize.serverGreeting)
        bytes.appendBigEndian(NBDMagic.initPassword)
        bytes.appendBigEndian(NBDMagic.option)
        bytes.appendBigEndian(HandshakeFlags([.fixedNewstyle, .noZeroes]).rawValue)
        return bytes
    }

    /// Feeds bytes from the client and returns what to do, in order. After a
    /// `.transmission` or `.close` event the handshake takes no more input.
    public mutating func receive(_ bytes: some Sequence<UInt8>) -> [ServerHandshakeEvent] {
        if case .finished = state { return [] }
        input.append(contentsOf: bytes)
        var events: [ServerHandshakeEvent] = []
        while let event = step(&events), event { }
        return events
    }

    /// Bytes that followed the final option: the start of the transmission phase.
    public mutating func takeLeftover() -> [UInt8] { input.takeAll() }

    /// Advances by one message. Returns true to keep going, nil when more
    /// input is needed or the handshake has ended.
    private mutating func step(_ events: inout [ServerHandshakeEvent]) -> Bool? {
        switch state {
        case .finished:
            return nil
        case .awaitingClientFlags:
            guard input.count >= 4 else { return nil }
            let raw = input.peek(UInt32.self)
            input.skip(upTo: 4)
            let flags = ClientFlags(rawValue: raw)
            guard flags.isSubset(of: .known) else { return finish(&events, .unknownClientFlags(raw)) }
            guard flags.contains(.fixedNewstyle) else { return finish(&events, .notFixedNewstyle) }
            clientFlags = flags
            state = .awaitingOption
            return true
        case .discardingOption(let option, let remaining):
            let dropped = UInt64(input.skip(upTo: Int(clamping: remaining)))
            guard dropped == remaining else {
                state = .discardingOption(option, remaining: remaining - dropped)
                return nil
            }
            state = .awaitingOption
            events.append(.send(Self.optionReply(option, .errTooBig, message: "option data too long")))
            return true
        case .awaitingOption:
            guard input.count >= NBDMessageSize.optionHeader else { return nil }
            let magic = input.peek(UInt64.self)
            guard magic == NBDMagic.option else { return finish(&events, .badOptionMagic(magic)) }
            let option = OptionCode(rawValue: input.peek(UInt32.self, at: 8))
            let length = input.peek(UInt32.self, at: 12)
            if length > NBDLimits.maxOptionLength {
                input.skip(upTo: NBDMessageSize.optionHeader)
                guard countOption() else { return finish(&events, .tooManyOptions(limit: NBDLimits.maxOptions)) }
                switch option {
                case .exportName:
                    // It has no option reply, so NBD_REP_ERR_TOO_BIG would be
                    // read as the export size; no export has so long a name.
                    return finish(&events, .unknownExport("(\(length)-byte name)"))
                case .abort:
                    // The server MUST reply NBD_REP_ACK and SHOULD ignore the data.
                    events.append(.send(Self.optionReply(option, .ack)))
                    return finish(&events, .clientAborted)
                default:
                    state = .discardingOption(option, remaining: UInt64(length))
                    return true
                }
            }
            guard input.count >= NBDMessageSize.optionHeader + Int(length) else { return nil }
            input.skip(upTo: NBDMessageSize.optionHeader)
            let data = input.take(Int(length))
            guard countOption() else { return finish(&events, .tooManyOptions(limit: NBDLimits.maxOptions)) }
            return handle(option, data, &events)
        }
    }

    /// Counts one more option; false once the client has sent too many.
    private mutating func countOption() -> Bool {
        optionsSeen += 1
        return optionsSeen <= NBDLimits.maxOptions
    }

    private mutating func finish(_ events: inout [ServerHandshakeEvent], _ error: NBDProtocolError) -> Bool? {
        state = .finished
        events.append(.close(error))
        return nil
    }

    private mutating func handle(_ option: OptionCode, _ data: [UInt8], _ events: inout [ServerHandshakeEvent]) -> Bool? {
        switch option {
        case .exportName:
            // No way to report an error here: the protocol says to close.
            guard let name = String(validating: data, as: UTF8.self), let export = catalog.lookup(name) else {
                return finish(&events, .unknownExport(String(decoding: data, as: UTF8.self)))
            }
            let session = NegotiatedSession(export: export, structuredReplies: structuredReplies)
            var reply: [UInt8] = []
            reply.appendBigEndian(export.size)
            reply.appendBigEndian(session.flags.rawValue)
            if !clientFlags.contains(.noZeroes) {
                reply.append(contentsOf: repeatElement(0, count: NBDMessageSize.exportNameReplyZeroes))
            }
            events.append(.send(reply))
            state = .finished
            events.append(.transmission(session))
            return nil
        case .abort:
            events.append(.send(Self.optionReply(option, .ack)))
            return finish(&events, .clientAborted)
        case .list:
            guard data.isEmpty else {
                events.append(.send(Self.optionReply(option, .errInvalid, message: "NBD_OPT_LIST takes no data")))
                return true
            }
            var replies: [UInt8] = []
            for export in catalog.exports {
                var entry: [UInt8] = []
                entry.appendBigEndian(UInt32(export.name.utf8.count))
                entry.append(contentsOf: export.name.utf8)
                entry.append(contentsOf: export.description.utf8)
                replies.append(contentsOf: Self.optionReply(option, .server, data: entry))
            }
            replies.append(contentsOf: Self.optionReply(option, .ack))
            events.append(.send(replies))
            return true
        case .structuredReply:
            guard data.isEmpty else {
                events.append(.send(Self.optionReply(option, .errInvalid, message: "NBD_OPT_STRUCTURED_REPLY takes no data")))
                return true
            }
            guard offersStructuredReplies else {
                events.append(.send(Self.optionReply(option, .errUnsupported, message: "structured replies are not offered")))
                return true
            }
            structuredReplies = true
            events.append(.send(Self.optionReply(option, .ack)))
            return true
        case .info, .go:
            return handleInfo(option, data, &events)
        default:
            events.append(.send(Self.optionReply(option, .errUnsupported, message: "\(option) is not supported")))
            return true
        }
    }

    /// NBD_OPT_INFO and NBD_OPT_GO: name length, name, info request count, requests.
    private mutating func handleInfo(_ option: OptionCode, _ data: [UInt8], _ events: inout [ServerHandshakeEvent]) -> Bool? {
        func invalid(_ why: String) -> Bool {
            events.append(.send(Self.optionReply(option, .errInvalid, message: why)))
            return true
        }
        guard data.count >= 6 else { return invalid("option data too short") }
        let nameLength = Int(data.bigEndian(UInt32.self, at: 0))
        guard nameLength <= NBDLimits.maxStringLength, nameLength <= data.count - 6 else {
            return invalid("export name length \(nameLength) out of bounds")
        }
        let requestCount = Int(data.bigEndian(UInt16.self, at: 4 + nameLength))
        guard requestCount <= NBDLimits.maxInfoRequests, data.count == 6 + nameLength + 2 * requestCount else {
            return invalid("information request count does not match the option length")
        }
        guard let name = String(validating: data[4..<(4 + nameLength)], as: UTF8.self) else {
            return invalid("export name is not UTF-8")
        }
        let requested = (0..<requestCount).map {
            InfoType(rawValue: data.bigEndian(UInt16.self, at: 6 + nameLength + 2 * $0))
        }
        guard let export = catalog.lookup(name) else {
            events.append(.send(Self.optionReply(option, .errUnknown, message: "no export named \"\(name)\"")))
            return true
        }
        let session = NegotiatedSession(export: export, structuredReplies: structuredReplies)
        var replies: [UInt8] = []
        var info: [UInt8] = []
        info.appendBigEndian(InfoType.export.rawValue)
        info.appendBigEndian(export.size)
        info.appendBigEndian(session.flags.rawValue)
        replies.append(contentsOf: Self.optionReply(option, .info, data: info))
        if requested.contains(.name) {
            info = []
            info.appendBigEndian(InfoType.name.rawValue)
            info.append(contentsOf: export.name.utf8)
            replies.append(contentsOf: Self.optionReply(option, .info, data: info))
        }
        if requested.contains(.description), !export.description.isEmpty {
            info = []
            info.appendBigEndian(InfoType.description.rawValue)
            info.append(contentsOf: export.description.utf8)
            replies.append(contentsOf: Self.optionReply(option, .info, data: info))
        }
        // Always sent: a client that did not ask may still honour it, and
        // one that did is told the truth about alignment.
        info = []
        info.appendBigEndian(InfoType.blockSize.rawValue)
        info.appendBigEndian(export.blockSize.minimum)
        info.appendBigEndian(export.blockSize.preferred)
        info.appendBigEndian(export.blockSize.maximum)
        replies.append(contentsOf: Self.optionReply(option, .info, data: info))
        replies.append(contentsOf: Self.optionReply(option, .ack))
        events.append(.send(replies))
        if option == .go {
            state = .finished
            events.append(.transmission(session))
            return nil
        }
        return true
    }

    /// Encodes one option reply: magic, option, type, length, data.
    public static func optionReply(
        _ option: OptionCode, _ type: OptionReplyType, data: [UInt8] = [], message: String = ""
    ) -> [UInt8] {
        let payload = data + Array(message.utf8.prefix(NBDLimits.maxStringLength))
        var bytes: [UInt8] = []
        bytes.reserveCapacity(NBDMessageSize.optionReplyHeader + payload.count)
        bytes.appendBigEndian(NBDMagic.optionReply)
        bytes.appendBigEndian(option.rawValue)
        bytes.appendBigEndian(type.rawValue)
        bytes.appendBigEndian(UInt32(payload.count))
        bytes.append(contentsOf: payload)
        return bytes
    }
}
