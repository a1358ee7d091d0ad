/// Everything that makes a peer's byte stream unacceptable. Each of these
/// ends the connection: after a framing error the stream cannot be trusted
/// to be in step any more.
public enum NBDProtocolError: Error, Sendable, Hashable, CustomStringConvertible {
    // Handshake, either side.
    case badGreetingMagic(UInt64)
    case notFixedNewstyle
    case unknownClientFlags(UInt32)
    case badOptionMagic(UInt64)
    case tooManyOptions(limit: Int)
    case clientAborted
    case unknownExport(String)
    case badOptionReplyMagic(UInt64)
    case unexpectedOptionReply(option: OptionCode, expected: OptionCode)
    case optionReplyTooLong(length: UInt32, limit: Int)
    case malformedOptionReply(OptionCode, OptionReplyType, String)
    case optionRefused(OptionCode, OptionReplyType, message: String)
    case missingExportInfo
    case invalidBlockSize(BlockSizeConstraints)
    case missingHasFlags(TransmissionFlags)
    // Transmission, server side.
    case badRequestMagic(UInt32)
    // Transmission, client side.
    case badReplyMagic(UInt32)
    case unknownCookie(UInt64)
    case unexpectedStructuredReply(cookie: UInt64)
    case simpleReplyToStructuredRead(cookie: UInt64)
    case chunkTooLong(cookie: UInt64, length: UInt32, limit: UInt32)
    case malformedChunk(cookie: UInt64, String)
    case readOutOfRange(cookie: UInt64, offset: UInt64, length: UInt64)
    case overlappingReadChunks(cookie: UInt64, offset: UInt64)
    case incompleteRead(cookie: UInt64, received: UInt64, expected: UInt64)

    public var description: String {
        switch self {
        case .badGreetingMagic(let magic): "bad greeting magic 0x\(String(magic, radix: 16))"
        case .notFixedNewstyle: "peer does not speak fixed newstyle negotiation"
        case .unknownClientFlags(let flags): "unknown client flags 0x\(String(flags, radix: 16))"
        case .badOptionMagic(let magic): "bad option magic 0x\(String(magic, radix: 16))"
        case .tooManyOptions(let limit): "more than \(limit) options in one handshake"
        case .clientAborted: "client sent NBD_OPT_ABORT"
        case .unknownExport(let name): "no export named \"\(name)\""
        case .badOptionReplyMagic(let magic): "bad option reply magic 0x\(String(magic, radix: 16))"
        case .unexpectedOptionReply(let option, let expected):
            "reply to \(option) while waiting for \(expected)"
        case .optionReplyTooLong(let length, let limit): "option reply of \(length) bytes exceeds \(limit)"
        case .malformedOptionReply(let option, let type, let why): "malformed \(type) to \(option): \(why)"
        case .optionRefused(let option, let type, let message):
            "server refused \(option) with \(type)" + (message.isEmpty ? "" : ": \(message)")
        case .missingExportInfo: "NBD_OPT_GO acknowledged without NBD_INFO_EXPORT"
        case .invalidBlockSize(let sizes):
            "invalid block size constraints min \(sizes.minimum) preferred \(sizes.preferred) max \(sizes.maximum)"
        case .missingHasFlags(let flags): "transmission flags 0x\(String(flags.rawValue, radix: 16)) lack NBD_FLAG_HAS_FLAGS"
        case .badRequestMagic(let magic): "bad request magic 0x\(String(magic, radix: 16))"
        case .badReplyMagic(let magic): "bad reply magic 0x\(String(magic, radix: 16))"
        case .unknownCookie(let cookie): "reply for cookie \(cookie), which no request in flight carries"
        case .unexpectedStructuredReply(let cookie): "structured reply chunk for cookie \(cookie) without negotiation"
        case .simpleReplyToStructuredRead(let cookie): "simple reply to NBD_CMD_READ \(cookie) under structured replies"
        case .chunkTooLong(let cookie, let length, let limit): "chunk for cookie \(cookie) of \(length) bytes exceeds \(limit)"
        case .malformedChunk(let cookie, let why): "malformed chunk for cookie \(cookie): \(why)"
        case .readOutOfRange(let cookie, let offset, let length):
            "read chunk for cookie \(cookie) at \(offset)+\(length) lies outside the request"
        case .overlappingReadChunks(let cookie, let offset): "read chunks for cookie \(cookie) overlap at \(offset)"
        case .incompleteRead(let cookie, let received, let expected):
            "read \(cookie) completed with \(received) of \(expected) bytes"
        }
    }
}
