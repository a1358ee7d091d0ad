/// What the client handshake asks its driver to do.
public enum ClientHandshakeEvent: Sendable, Equatable {
    /// Send these bytes to the server.
    case send([UInt8])
    /// The export is selected: enter transmission. Bytes the server sent
    /// after its final reply are in `ClientHandshake.takeLeftover()`.
    case ready(ClientSession)
    /// The server's export list (for `.list`); the driver should disconnect.
    case listed([ListedExport])
    /// The handshake failed; close the connection.
    case failed(NBDProtocolError)
}

/// An entry of NBD_OPT_LIST.
public struct ListedExport: Sendable, Equatable {
    public var name: String
    public var description: String
}

/// The outcome of a successful handshake, as the client sees it.
public struct ClientSession: Sendable, Equatable {
    public var exportName: String
    public var size: UInt64
    public var flags: TransmissionFlags
    public var blockSize: BlockSizeConstraints?
    public var structuredReplies: Bool
}

/// The client side of fixed newstyle negotiation, without I/O. It waits for
/// the server's greeting, negotiates structured replies if asked, then
/// selects the export with NBD_OPT_GO (or lists exports with NBD_OPT_LIST).
/// Every reply is checked: magic, the option it answers, bounded lengths.
public struct ClientHandshake: Sendable {
    public enum Goal: Sendable, Equatable {
        case export(String, structuredReplies: Bool)
        case list
    }

    private enum State: Sendable {
        case awaitingGreeting
        case awaitingReplies(OptionCode)
        case finished
    }

    private let goal: Goal
    private var state: State = .awaitingGreeting
    private var input = InputBuffer()
    private var structuredReplies = false
    private var exportInfo: (size: UInt64, flags: TransmissionFlags)?
    private var blockSize: BlockSizeConstraints?
    private var listed: [ListedExport] = []

    public init(goal: Goal) {
        self.goal = goal
    }

    /// Feeds bytes from the server and returns what to do, in order.
    public mutating func receive(_ bytes: some Sequence<UInt8>) -> [ClientHandshakeEvent] {
        if case .finished = state { return [] }
        input.append(contentsOf: bytes)
        var events: [ClientHandshakeEvent] = []
        while step(&events) {}
        return events
    }

    /// Bytes that followed the server's final handshake reply.
    public mutating func takeLeftover() -> [UInt8] { input.takeAll() }

    private mutating func fail(_ events: inout [ClientHandshakeEvent], _ error: NBDProtocolError) -> Bool {
        state = .finished
        events.append(.failed(error))
        return false
    }

    /// Handles one message; false when more input is needed or the handshake ended.
    private mutating func step(_ events: inout [ClientHandshakeEvent]) -> Bool {
        switch state {
        case .finished:
            return false
        case .awaitingGreeting:
            guard input.count >= NBDMessageSize.serverGreeting else { return false }
            let password = input.peek(UInt64.self)
            let magic = input.peek(UInt64.self, at: 8)
            let flags = HandshakeFlags(rawValue: input.peek(UInt16.self, at: 16))
            input.skip(upTo: NBDMessageSize.serverGreeting)
            guard password == NBDMagic.initPassword else { return fail(&events, .badGreetingMagic(password)) }
            guard magic == NBDMagic.option else { return fail(&events, .badGreetingMagic(magic)) }
            guard flags.contains(.fixedNewstyle) else { return fail(&events, .notFixedNewstyle) }
            var clientFlags: ClientFlags = .fixedNewstyle
            if flags.contains(.noZeroes) { clientFlags.insert(.noZeroes) }
            var bytes: [UInt8] = []
            bytes.appendBigEndian(clientFlags.rawValue)
            switch goal {
            case .list:
                bytes.append(contentsOf: Self.option(.list))
                state = .awaitingReplies(.list)
            case .export(let name, let structured):
                if structured {
                    bytes.append(contentsOf: Self.option(.structuredReply))
                    state = .awaitingReplies(.structuredReply)
                } else {
                    bytes.append(contentsOf: Self.goOption(name))
                    state = .awaitingReplies(.go)
                }
            }
            events.append(.send(bytes))
            return true
        case .awaitingReplies(let expected):
            guard input.count >= NBDMessageSize.optionReplyHeader else { return false }
            let magic = input.peek(UInt64.self)
            let option = OptionCode(rawValue: input.peek(UInt32.self, at: 8))
            let type = OptionReplyType(rawValue: input.peek(UInt32.self, at: 12))
            let length = input.peek(UInt32.self, at: 16)
            guard magic == NBDMagic.optionReply else { return fail(&events, .badOptionReplyMagic(magic)) }
            guard option == expected else { return fail(&events, .unexpectedOptionReply(option: option, expected: expected)) }
            guard length <= NBDLimits.maxOptionReplyLength else {
                return fail(&events, .optionReplyTooLong(length: length, limit: NBDLimits.maxOptionReplyLength))
            }
            guard input.count >= NBDMessageSize.optionReplyHeader + Int(length) else { return false }
            input.skip(upTo: NBDMessageSize.optionReplyHeader)
            let data = input.take(Int(length))
            return handleReply(option, type, data, &events)
        }
    }

    private mutating func handleReply(
        _ option: OptionCode, _ type: OptionReplyType, _ data: [UInt8], _ events: inout [ClientHandshakeEvent]
    ) -> Bool {
        if type.isError {
            if option == .structuredReply, type == .errUnsupported, case .export(let name, _) = goal {
                // An old server: carry on with simple replies.
                events.append(.send(Self.goOption(name)))
                state = .awaitingReplies(.go)
                return true
            }
            return fail(&events, .optionRefused(option, type, message: String(decoding: data, as: UTF8.self)))
        }
        switch (option, type) {
        case (.structuredReply, .ack):
            guard data.isEmpty else { return fail(&events, .malformedOptionReply(option, type, "unexpected data")) }
            guard case .export(let name, _) = goal else { return fail(&events, .malformedOptionReply(option, type, "unasked")) }
            structuredReplies = true
            events.append(.send(Self.goOption(name)))
            state = .awaitingReplies(.go)
            return true
        case (.list, .server):
            guard listed.count < NBDLimits.maxListedExports else {
                return fail(&events, .malformedOptionReply(option, type, "more than \(NBDLimits.maxListedExports) exports"))
            }
            guard data.count >= 4 else { return fail(&events, .malformedOptionReply(option, type, "too short")) }
            let nameLength = Int(data.bigEndian(UInt32.self, at: 0))
            guard nameLength <= data.count - 4 else {
                return fail(&events, .malformedOptionReply(option, type, "name length \(nameLength) past the reply"))
            }
            listed.append(
                ListedExport(
                    name: String(decoding: data[4..<(4 + nameLength)], as: UTF8.self),
                    description: String(decoding: data[(4 + nameLength)...], as: UTF8.self)))
            return true
        case (.list, .ack):
            state = .finished
            events.append(.listed(listed))
            return false
        case (.go, .info):
            return handleInfo(data, &events)
        case (.go, .ack):
            guard case .export(let name, _) = goal, let exportInfo else { return fail(&events, .missingExportInfo) }
            state = .finished
            events.append(
                .ready(
                    ClientSession(
                        exportName: name, size: exportInfo.size, flags: exportInfo.flags, blockSize: blockSize,
                        structuredReplies: structuredReplies)))
            return false
        default:
            return fail(&events, .malformedOptionReply(option, type, "unexpected reply type"))
        }
    }

    private mutating func handleInfo(_ data: [UInt8], _ events: inout [ClientHandshakeEvent]) -> Bool {
        guard data.count >= 2 else { return fail(&events, .malformedOptionReply(.go, .info, "too short")) }
        switch InfoType(rawValue: data.bigEndian(UInt16.self, at: 0)) {
        case .export:
            guard data.count == 12 else { return fail(&events, .malformedOptionReply(.go, .info, "NBD_INFO_EXPORT length \(data.count)")) }
            let flags = TransmissionFlags(rawValue: data.bigEndian(UInt16.self, at: 10))
            guard flags.contains(.hasFlags) else { return fail(&events, .missingHasFlags(flags)) }
            exportInfo = (data.bigEndian(UInt64.self, at: 2), flags)
        case .blockSize:
            guard data.count == 14 else { return fail(&events, .malformedOptionReply(.go, .info, "NBD_INFO_BLOCK_SIZE length \(data.count)")) }
            let sizes = BlockSizeConstraints(
                minimum: data.bigEndian(UInt32.self, at: 2), preferred: data.bigEndian(UInt32.self, at: 6),
                maximum: data.bigEndian(UInt32.self, at: 10))
            guard sizes.isValid else { return fail(&events, .invalidBlockSize(sizes)) }
            blockSize = sizes
        default:
            break  // Names, descriptions and future types are informational.
        }
        return true
    }

    static func option(_ code: OptionCode, data: [UInt8] = []) -> [UInt8] {
        var bytes: [UInt8] = []
        bytes.appendBigEndian(NBDMagic.option)
        bytes.appendBigEndian(code.rawValue)
        bytes.appendBigEndian(UInt32(data.count))
        bytes.append(contentsOf: data)
        return bytes
    }

    static func goOption(_ name: String) -> [UInt8] {
        var data: [UInt8] = []
        data.appendBigEndian(UInt32(name.utf8.count))
        data.append(contentsOf: name.utf8)
        data.appendBigEndian(UInt16(1))
        data.appendBigEndian(InfoType.blockSize.rawValue)
        return option(.go, data: data)
    }
}
