/// Bounds on everything a peer controls. Every length read off the wire is
/// checked against one of these before memory is allocated for it.
public enum NBDLimits {
    /// Longest export name, description or error message. The protocol
    /// document caps every string at 4,096 bytes (`NBD_MAX_STRING`).
    public static let maxStringLength = 4096

    /// Largest option payload accepted during the handshake. The biggest
    /// legitimate option is NBD_OPT_GO/INFO: a 4-byte name length, a name of
    /// at most `maxStringLength` bytes, a 2-byte count and `maxInfoRequests`
    /// 2-byte codes, which fits comfortably in 8 KiB. Larger options are
    /// skipped without being stored and answered with NBD_REP_ERR_TOO_BIG.
    public static let maxOptionLength = 8192

    /// Largest option reply a client accepts. An NBD_REP_SERVER entry is a
    /// name plus an optional description, each at most `maxStringLength`.
    public static let maxOptionReplyLength = 2 * maxStringLength + 64

    /// NBD_REP_SERVER entries a client accepts in reply to NBD_OPT_LIST. The
    /// entries are kept until NBD_REP_ACK, so a server that never ends its
    /// list would otherwise grow the client without bound.
    public static let maxListedExports = 1024

    /// Information requests in one NBD_OPT_INFO/GO. Only four info types
    /// exist; 64 leaves room for repeats and future types.
    public static let maxInfoRequests = 64

    /// Options one client may send before transmission. A legitimate client
    /// sends a handful; an endless haggle only ties up the connection.
    public static let maxOptions = 256

    /// Largest READ or WRITE payload. The protocol document says no payload
    /// up to 2^25 bytes should be considered a denial of service, and this
    /// is also what the server advertises as its maximum block size.
    public static let maxPayload: UInt32 = 1 << 25

    /// Bytes of structured-reply overhead a server may add to a maximal
    /// payload: the 8-byte offset of NBD_REPLY_TYPE_OFFSET_DATA, or the
    /// error code, message length and offset of an error chunk with a
    /// message of at most `maxStringLength`.
    public static let maxChunkOverhead: UInt32 = 4 + 2 + UInt32(maxStringLength) + 8
}

/// Sizes of fixed-length messages.
public enum NBDMessageSize {
    public static let serverGreeting = 18  // NBDMAGIC, IHAVEOPT, 16-bit flags
    public static let optionHeader = 16  // IHAVEOPT, option, length
    public static let optionReplyHeader = 20  // magic, option, type, length
    public static let request = 28  // magic, flags, type, cookie, offset, length
    public static let simpleReply = 16  // magic, error, cookie
    public static let structuredReplyHeader = 20  // magic, flags, type, cookie, length
    public static let exportNameReplyZeroes = 124  // padding after NBD_OPT_EXPORT_NAME's reply
}
