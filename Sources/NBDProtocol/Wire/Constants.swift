// Wire constants of the NBD protocol, as named in the upstream protocol
// document (NetworkBlockDevice/nbd, doc/proto.md). Values that a peer may
// send outside the known set are modelled as RawRepresentable structs rather
// than enums, so decoding an unknown value is never a trap.

/// Magic numbers that frame every NBD message.
public enum NBDMagic {
    /// `NBDMAGIC`, the first eight bytes the server sends.
    public static let initPassword: UInt64 = 0x4e42_444d_4147_4943
    /// `IHAVEOPT`: newstyle negotiation, and the prefix of every client option.
    public static let option: UInt64 = 0x4948_4156_454F_5054
    /// Prefix of every server option reply.
    public static let optionReply: UInt64 = 0x0003_e889_0455_65a9
    /// `NBD_REQUEST_MAGIC`.
    public static let request: UInt32 = 0x2560_9513
    /// `NBD_SIMPLE_REPLY_MAGIC`.
    public static let simpleReply: UInt32 = 0x6744_6698
    /// `NBD_STRUCTURED_REPLY_MAGIC`.
    public static let structuredReply: UInt32 = 0x668e_33ef
}

/// Handshake flags the server sends after `IHAVEOPT` (`NBD_FLAG_FIXED_NEWSTYLE`, `NBD_FLAG_NO_ZEROES`).
public struct HandshakeFlags: OptionSet, Sendable, Hashable {
    public let rawValue: UInt16
    public init(rawValue: UInt16) { self.rawValue = rawValue }
    public static let fixedNewstyle = HandshakeFlags(rawValue: 1 << 0)
    public static let noZeroes = HandshakeFlags(rawValue: 1 << 1)
}

/// Client flags sent in reply to the server's greeting (`NBD_FLAG_C_FIXED_NEWSTYLE`, `NBD_FLAG_C_NO_ZEROES`).
public struct ClientFlags: OptionSet, Sendable, Hashable {
    public let rawValue: UInt32
    public init(rawValue: UInt32) { self.rawValue = rawValue }
    public static let fixedNewstyle = ClientFlags(rawValue: 1 << 0)
    public static let noZeroes = ClientFlags(rawValue: 1 << 1)
    public static let known: ClientFlags = [.fixedNewstyle, .noZeroes]
}

/// Option codes of the haggling phase (`NBD_OPT_*`).
public struct OptionCode: RawRepresentable, Sendable, Hashable, CustomStringConvertible {
    public let rawValue: UInt32
    public init(rawValue: UInt32) { self.rawValue = rawValue }
    public static let exportName = OptionCode(rawValue: 1)
    public static let abort = OptionCode(rawValue: 2)
    public static let list = OptionCode(rawValue: 3)
    public static let startTLS = OptionCode(rawValue: 5)
    public static let info = OptionCode(rawValue: 6)
    public static let go = OptionCode(rawValue: 7)
    public static let structuredReply = OptionCode(rawValue: 8)
    public static let listMetaContext = OptionCode(rawValue: 9)
    public static let setMetaContext = OptionCode(rawValue: 10)
    public static let extendedHeaders = OptionCode(rawValue: 11)

    public var description: String {
        switch self {
        case .exportName: "NBD_OPT_EXPORT_NAME"
        case .abort: "NBD_OPT_ABORT"
        case .list: "NBD_OPT_LIST"
        case .startTLS: "NBD_OPT_STARTTLS"
        case .info: "NBD_OPT_INFO"
        case .go: "NBD_OPT_GO"
        case .structuredReply: "NBD_OPT_STRUCTURED_REPLY"
        case .listMetaContext: "NBD_OPT_LIST_META_CONTEXT"
        case .setMetaContext: "NBD_OPT_SET_META_CONTEXT"
        case .extendedHeaders: "NBD_OPT_EXTENDED_HEADERS"
        default: "option \(rawValue)"
        }
    }
}

/// Option reply types (`NBD_REP_*`); error types have bit 31 set.
public struct OptionReplyType: RawRepresentable, Sendable, Hashable, CustomStringConvertible {
    public let rawValue: UInt32
    public init(rawValue: UInt32) { self.rawValue = rawValue }
    public static let ack = OptionReplyType(rawValue: 1)
    public static let server = OptionReplyType(rawValue: 2)
    public static let info = OptionReplyType(rawValue: 3)
    public static let metaContext = OptionReplyType(rawValue: 4)
    static let errorBit: UInt32 = 1 << 31
    public static let errUnsupported = OptionReplyType(rawValue: errorBit | 1)
    public static let errPolicy = OptionReplyType(rawValue: errorBit | 2)
    public static let errInvalid = OptionReplyType(rawValue: errorBit | 3)
    public static let errPlatform = OptionReplyType(rawValue: errorBit | 4)
    public static let errTLSRequired = OptionReplyType(rawValue: errorBit | 5)
    public static let errUnknown = OptionReplyType(rawValue: errorBit | 6)
    public static let errShutdown = OptionReplyType(rawValue: errorBit | 7)
    public static let errBlockSizeRequired = OptionReplyType(rawValue: errorBit | 8)
    public static let errTooBig = OptionReplyType(rawValue: errorBit | 9)

    public var isError: Bool { rawValue & Self.errorBit != 0 }

    public var description: String {
        switch self {
        case .ack: "NBD_REP_ACK"
        case .server: "NBD_REP_SERVER"
        case .info: "NBD_REP_INFO"
        case .metaContext: "NBD_REP_META_CONTEXT"
        case .errUnsupported: "NBD_REP_ERR_UNSUP"
        case .errPolicy: "NBD_REP_ERR_POLICY"
        case .errInvalid: "NBD_REP_ERR_INVALID"
        case .errPlatform: "NBD_REP_ERR_PLATFORM"
        case .errTLSRequired: "NBD_REP_ERR_TLS_REQD"
        case .errUnknown: "NBD_REP_ERR_UNKNOWN"
        case .errShutdown: "NBD_REP_ERR_SHUTDOWN"
        case .errBlockSizeRequired: "NBD_REP_ERR_BLOCK_SIZE_REQD"
        case .errTooBig: "NBD_REP_ERR_TOO_BIG"
        default: "reply type 0x\(String(rawValue, radix: 16))"
        }
    }
}

/// Information types carried by `NBD_REP_INFO` (`NBD_INFO_*`).
public struct InfoType: RawRepresentable, Sendable, Hashable {
    public let rawValue: UInt16
    public init(rawValue: UInt16) { self.rawValue = rawValue }
    public static let export = InfoType(rawValue: 0)
    public static let name = InfoType(rawValue: 1)
    public static let description = InfoType(rawValue: 2)
    public static let blockSize = InfoType(rawValue: 3)
}

/// Per-export transmission flags (`NBD_FLAG_*` in the transmission phase).
public struct TransmissionFlags: OptionSet, Sendable, Hashable {
    public let rawValue: UInt16
    public init(rawValue: UInt16) { self.rawValue = rawValue }
    public static let hasFlags = TransmissionFlags(rawValue: 1 << 0)
    public static let readOnly = TransmissionFlags(rawValue: 1 << 1)
    public static let sendFlush = TransmissionFlags(rawValue: 1 << 2)
    public static let sendFUA = TransmissionFlags(rawValue: 1 << 3)
    public static let rotational = TransmissionFlags(rawValue: 1 << 4)
    public static let sendTrim = TransmissionFlags(rawValue: 1 << 5)
    public static let sendWriteZeroes = TransmissionFlags(rawValue: 1 << 6)
    public static let sendDF = TransmissionFlags(rawValue: 1 << 7)
    public static let canMultiConn = TransmissionFlags(rawValue: 1 << 8)
    public static let sendResize = TransmissionFlags(rawValue: 1 << 9)
    public static let sendCache = TransmissionFlags(rawValue: 1 << 10)
    public static let sendFastZero = TransmissionFlags(rawValue: 1 << 11)
}

/// Request types (`NBD_CMD_*`).
public struct Command: RawRepresentable, Sendable, Hashable, CustomStringConvertible {
    public let rawValue: UInt16
    public init(rawValue: UInt16) { self.rawValue = rawValue }
    public static let read = Command(rawValue: 0)
    public static let write = Command(rawValue: 1)
    public static let disconnect = Command(rawValue: 2)
    public static let flush = Command(rawValue: 3)
    public static let trim = Command(rawValue: 4)
    public static let cache = Command(rawValue: 5)
    public static let writeZeroes = Command(rawValue: 6)
    public static let blockStatus = Command(rawValue: 7)
    public static let resize = Command(rawValue: 8)

    public var description: String {
        switch self {
        case .read: "NBD_CMD_READ"
        case .write: "NBD_CMD_WRITE"
        case .disconnect: "NBD_CMD_DISC"
        case .flush: "NBD_CMD_FLUSH"
        case .trim: "NBD_CMD_TRIM"
        case .cache: "NBD_CMD_CACHE"
        case .writeZeroes: "NBD_CMD_WRITE_ZEROES"
        case .blockStatus: "NBD_CMD_BLOCK_STATUS"
        case .resize: "NBD_CMD_RESIZE"
        default: "command \(rawValue)"
        }
    }
}

/// Request flags (`NBD_CMD_FLAG_*`).
public struct CommandFlags: OptionSet, Sendable, Hashable {
    public let rawValue: UInt16
    public init(rawValue: UInt16) { self.rawValue = rawValue }
    public static let fua = CommandFlags(rawValue: 1 << 0)
    public static let noHole = CommandFlags(rawValue: 1 << 1)
    public static let dontFragment = CommandFlags(rawValue: 1 << 2)
    public static let requestOne = CommandFlags(rawValue: 1 << 3)
    public static let fastZero = CommandFlags(rawValue: 1 << 4)
    public static let payloadLength = CommandFlags(rawValue: 1 << 5)
}

/// Structured reply chunk flags (`NBD_REPLY_FLAG_*`).
public struct ReplyFlags: OptionSet, Sendable, Hashable {
    public let rawValue: UInt16
    public init(rawValue: UInt16) { self.rawValue = rawValue }
    public static let done = ReplyFlags(rawValue: 1 << 0)
}

/// Structured reply chunk types (`NBD_REPLY_TYPE_*`); error types have bit 15 set.
public struct StructuredReplyType: RawRepresentable, Sendable, Hashable {
    public let rawValue: UInt16
    public init(rawValue: UInt16) { self.rawValue = rawValue }
    public static let none = StructuredReplyType(rawValue: 0)
    public static let offsetData = StructuredReplyType(rawValue: 1)
    public static let offsetHole = StructuredReplyType(rawValue: 2)
    public static let blockStatus = StructuredReplyType(rawValue: 5)
    public static let error = StructuredReplyType(rawValue: 1 << 15 | 1)
    public static let errorOffset = StructuredReplyType(rawValue: 1 << 15 | 2)
    public var isError: Bool { rawValue & (1 << 15) != 0 }
}

/// Error values carried in replies (`NBD_E*`). Their numbers are fixed by the
/// protocol, independent of the host's errno values.
public struct NBDErrorCode: RawRepresentable, Sendable, Hashable, Error, CustomStringConvertible {
    public let rawValue: UInt32
    public init(rawValue: UInt32) { self.rawValue = rawValue }
    public static let permissionDenied = NBDErrorCode(rawValue: 1)  // NBD_EPERM
    public static let ioError = NBDErrorCode(rawValue: 5)  // NBD_EIO
    public static let outOfMemory = NBDErrorCode(rawValue: 12)  // NBD_ENOMEM
    public static let invalid = NBDErrorCode(rawValue: 22)  // NBD_EINVAL
    public static let noSpace = NBDErrorCode(rawValue: 28)  // NBD_ENOSPC
    public static let overflow = NBDErrorCode(rawValue: 75)  // NBD_EOVERFLOW
    public static let notSupported = NBDErrorCode(rawValue: 95)  // NBD_ENOTSUP
    public static let shutdown = NBDErrorCode(rawValue: 108)  // NBD_ESHUTDOWN

    public var description: String {
        switch self {
        case .permissionDenied: "EPERM"
        case .ioError: "EIO"
        case .outOfMemory: "ENOMEM"
        case .invalid: "EINVAL"
        case .noSpace: "ENOSPC"
        case .overflow: "EOVERFLOW"
        case .notSupported: "ENOTSUP"
        case .shutdown: "ESHUTDOWN"
        default: "NBD error \(rawValue)"
        }
    }
}
