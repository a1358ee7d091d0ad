import NBDProtocol
import Testing

// Builders for wire messages, written from proto.md independently of the
// encoders under test, so that a test compares against the spec and not
// against the code it checks.

/// The big-endian bytes of `value`.
func be<T: FixedWidthInteger>(_ value: T) -> [UInt8] {
    (0..<MemoryLayout<T>.size).reversed().map { UInt8(truncatingIfNeeded: value >> ($0 * 8)) }
}

enum Wire {
    /// "NBDMAGIC" then "IHAVEOPT".
    static let greetingMagics = Array("NBDMAGIC".utf8) + Array("IHAVEOPT".utf8)

    static func greeting(flags: UInt16 = 3) -> [UInt8] { greetingMagics + be(flags) }

    // MARK: Client options

    static func option(_ code: OptionCode, _ data: [UInt8] = []) -> [UInt8] {
        option(raw: code.rawValue, data)
    }

    static func option(raw code: UInt32, _ data: [UInt8] = []) -> [UInt8] {
        Array("IHAVEOPT".utf8) + be(code) + be(UInt32(data.count)) + data
    }

    /// The data of NBD_OPT_INFO / NBD_OPT_GO.
    static func infoData(name: [UInt8], requests: [InfoType] = []) -> [UInt8] {
        be(UInt32(name.count)) + name + be(UInt16(requests.count)) + requests.flatMap { be($0.rawValue) }
    }

    static func info(_ name: String, _ requests: [InfoType] = []) -> [UInt8] {
        option(.info, infoData(name: Array(name.utf8), requests: requests))
    }

    static func go(_ name: String, _ requests: [InfoType] = []) -> [UInt8] {
        option(.go, infoData(name: Array(name.utf8), requests: requests))
    }

    // MARK: Option replies

    static func reply(_ option: OptionCode, _ type: OptionReplyType, _ data: [UInt8] = []) -> [UInt8] {
        reply(raw: option.rawValue, type: type.rawValue, data)
    }

    static func reply(raw option: UInt32, type: UInt32, _ data: [UInt8] = []) -> [UInt8] {
        be(UInt64(0x0003_e889_0455_65a9)) + be(option) + be(type) + be(UInt32(data.count)) + data
    }

    static func serverEntry(_ name: String, _ description: String) -> [UInt8] {
        be(UInt32(name.utf8.count)) + Array(name.utf8) + Array(description.utf8)
    }

    static func infoExport(size: UInt64, flags: TransmissionFlags) -> [UInt8] {
        be(UInt16(0)) + be(size) + be(flags.rawValue)
    }

    static func infoName(_ name: String) -> [UInt8] { be(UInt16(1)) + Array(name.utf8) }

    static func infoDescription(_ text: String) -> [UInt8] { be(UInt16(2)) + Array(text.utf8) }

    static func infoBlockSize(_ sizes: BlockSizeConstraints) -> [UInt8] {
        be(UInt16(3)) + be(sizes.minimum) + be(sizes.preferred) + be(sizes.maximum)
    }

    // MARK: Transmission

    static func request(
        flags: UInt16 = 0, _ command: Command, cookie: UInt64, offset: UInt64 = 0, length: UInt32 = 0
    ) -> [UInt8] {
        be(UInt32(0x2560_9513)) + be(flags) + be(command.rawValue) + be(cookie) + be(offset) + be(length)
    }

    static func simpleReply(error: UInt32 = 0, cookie: UInt64) -> [UInt8] {
        be(UInt32(0x6744_6698)) + be(error) + be(cookie)
    }

    static func chunk(done: Bool, type: UInt16, cookie: UInt64, _ body: [UInt8]) -> [UInt8] {
        chunkHeader(done: done, type: type, cookie: cookie, length: UInt32(body.count)) + body
    }

    static func chunkHeader(done: Bool, type: UInt16, cookie: UInt64, length: UInt32) -> [UInt8] {
        be(UInt32(0x668e_33ef)) + be(UInt16(done ? 1 : 0)) + be(type) + be(cookie) + be(length)
    }

    static func noneChunk(cookie: UInt64) -> [UInt8] { chunk(done: true, type: 0, cookie: cookie, []) }

    static func dataChunk(cookie: UInt64, offset: UInt64, _ data: [UInt8], done: Bool = false) -> [UInt8] {
        chunk(done: done, type: 1, cookie: cookie, be(offset) + data)
    }

    static func holeChunk(cookie: UInt64, offset: UInt64, length: UInt32, done: Bool = false) -> [UInt8] {
        chunk(done: done, type: 2, cookie: cookie, be(offset) + be(length))
    }

    static func errorChunk(
        cookie: UInt64, error: UInt32, message: String = "", offset: UInt64? = nil, done: Bool = true
    ) -> [UInt8] {
        let text = Array(message.utf8)
        var body = be(error) + be(UInt16(text.count)) + text
        if let offset { body += be(offset) }
        return chunk(done: done, type: offset == nil ? 0x8001 : 0x8002, cookie: cookie, body)
    }
}

/// One option reply as parsed back from the server's bytes.
struct ParsedOptionReply: Equatable {
    var option: OptionCode
    var type: OptionReplyType
    var data: [UInt8]
}

/// Splits a server's handshake output into option replies; records an
/// issue for anything that is not a well-formed sequence of them.
func parseOptionReplies(_ bytes: [UInt8], sourceLocation: SourceLocation = #_sourceLocation) -> [ParsedOptionReply] {
    func read<T: FixedWidthInteger>(_: T.Type, _ at: Int) -> T {
        bytes[at..<(at + MemoryLayout<T>.size)].reduce(T(0)) { $0 << 8 | T($1) }
    }
    var replies: [ParsedOptionReply] = []
    var index = 0
    while index < bytes.count {
        guard bytes.count - index >= 20, read(UInt64.self, index) == 0x0003_e889_0455_65a9 else {
            Issue.record("not an option reply at byte \(index)", sourceLocation: sourceLocation)
            return replies
        }
        let length = Int(read(UInt32.self, index + 16))
        guard bytes.count - index - 20 >= length else {
            Issue.record("option reply at byte \(index) is truncated", sourceLocation: sourceLocation)
            return replies
        }
        replies.append(
            ParsedOptionReply(
                option: OptionCode(rawValue: read(UInt32.self, index + 8)),
                type: OptionReplyType(rawValue: read(UInt32.self, index + 12)),
                data: Array(bytes[(index + 20)..<(index + 20 + length)])))
        index += 20 + length
    }
    return replies
}

/// The bytes of every `.send` event, concatenated, and the other events.
func sent(_ events: [ServerHandshakeEvent]) -> [UInt8] {
    events.flatMap { event -> [UInt8] in
        if case .send(let bytes) = event { return bytes }
        return []
    }
}

func sent(_ events: [ClientHandshakeEvent]) -> [UInt8] {
    events.flatMap { event -> [UInt8] in
        if case .send(let bytes) = event { return bytes }
        return []
    }
}
