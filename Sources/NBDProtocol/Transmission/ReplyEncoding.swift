/// Encodes the server's transmission replies. READ replies are laid out so
/// the data can be read from storage straight into the buffer after the
/// header: `readReplyHeaderLength(structured:)` bytes of header, then data.
public enum ReplyEncoder {
    /// Bytes in front of READ data: a simple reply, or a structured
    /// NBD_REPLY_TYPE_OFFSET_DATA header plus its 8-byte offset.
    public static func readReplyHeaderLength(structured: Bool) -> Int {
        structured ? NBDMessageSize.structuredReplyHeader + 8 : NBDMessageSize.simpleReply
    }

    /// Writes the header of a successful READ reply carrying `length` bytes.
    public static func encodeReadReplyHeader(
        into buffer: UnsafeMutableRawBufferPointer, cookie: UInt64, offset: UInt64, length: UInt32, structured: Bool
    ) {
        if structured {
            encodeDoneChunkHeader(into: buffer, type: .offsetData, cookie: cookie, length: length + 8)
            buffer.storeBigEndian(offset, at: 20)
        } else {
            encodeSimpleReply(into: buffer, error: 0, cookie: cookie)
        }
    }

    /// A reply without data: success or an error. Under structured replies,
    /// a READ must get a structured reply even for an error; errors then
    /// travel as NBD_REPLY_TYPE_ERROR with a message for a human.
    public static func completion(
        cookie: UInt64, error: NBDErrorCode?, message: String = "", command: Command, structured: Bool
    ) -> [UInt8] {
        guard let error else {
            var bytes = [UInt8](repeating: 0, count: successLength(command: command, structured: structured))
            bytes.withUnsafeMutableBytes { encodeSuccess(into: $0, cookie: cookie, command: command, structured: structured) }
            return bytes
        }
        guard structured else {
            var bytes = [UInt8](repeating: 0, count: NBDMessageSize.simpleReply)
            bytes.withUnsafeMutableBytes { encodeSimpleReply(into: $0, error: error.rawValue, cookie: cookie) }
            return bytes
        }
        let text = Array(message.utf8.prefix(NBDLimits.maxStringLength))
        var bytes: [UInt8] = []
        bytes.reserveCapacity(NBDMessageSize.structuredReplyHeader + 6 + text.count)
        bytes.appendBigEndian(NBDMagic.structuredReply)
        bytes.appendBigEndian(ReplyFlags.done.rawValue)
        bytes.appendBigEndian(StructuredReplyType.error.rawValue)
        bytes.appendBigEndian(cookie)
        bytes.appendBigEndian(UInt32(6 + text.count))
        bytes.appendBigEndian(error.rawValue)
        bytes.appendBigEndian(UInt16(text.count))
        bytes.append(contentsOf: text)
        return bytes
    }

    /// The length of a successful reply without data
    /// (`encodeSuccess(into:cookie:command:structured:)`).
    public static func successLength(command: Command, structured: Bool) -> Int {
        structured && command == .read ? NBDMessageSize.structuredReplyHeader : NBDMessageSize.simpleReply
    }

    /// Writes a successful reply without data (WRITE, FLUSH, TRIM, ...; a
    /// READ only under structured replies, as NBD_REPLY_TYPE_NONE with
    /// NBD_REPLY_FLAG_DONE) into the first `successLength` bytes of
    /// `buffer`, so the server sends it without building an array.
    public static func encodeSuccess(into buffer: UnsafeMutableRawBufferPointer, cookie: UInt64, command: Command, structured: Bool) {
        if structured && command == .read {
            encodeDoneChunkHeader(into: buffer, type: .none, cookie: cookie, length: 0)
        } else {
            encodeSimpleReply(into: buffer, error: 0, cookie: cookie)
        }
    }

    /// A structured reply chunk's header with NBD_REPLY_FLAG_DONE (magic,
    /// flags, type, cookie, payload length) in the first 20 bytes of `buffer`.
    private static func encodeDoneChunkHeader(
        into buffer: UnsafeMutableRawBufferPointer, type: StructuredReplyType, cookie: UInt64, length: UInt32
    ) {
        buffer.storeBigEndian(NBDMagic.structuredReply, at: 0)
        buffer.storeBigEndian(ReplyFlags.done.rawValue, at: 4)
        buffer.storeBigEndian(type.rawValue, at: 6)
        buffer.storeBigEndian(cookie, at: 8)
        buffer.storeBigEndian(length, at: 16)
    }

    /// A simple reply (magic, error, cookie) in the first 16 bytes of `buffer`.
    private static func encodeSimpleReply(into buffer: UnsafeMutableRawBufferPointer, error: UInt32, cookie: UInt64) {
        buffer.storeBigEndian(NBDMagic.simpleReply, at: 0)
        buffer.storeBigEndian(error, at: 4)
        buffer.storeBigEndian(cookie, at: 8)
    }
}
