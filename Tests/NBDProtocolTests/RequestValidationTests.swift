import NBDProtocol
import Testing

@Suite struct RequestValidationTests {
    static let end: UInt64 = 1 << 30

    static func session(
        flags: TransmissionFlags = Fixtures.disk.flags, minimum: UInt32 = 512, maximum: UInt32 = 1 << 25
    ) -> NegotiatedSession {
        var export = Fixtures.disk
        export.flags = flags
        export.blockSize = BlockSizeConstraints(minimum: minimum, preferred: max(minimum, 4096), maximum: maximum)
        return NegotiatedSession(export: export, structuredReplies: true)
    }

    /// Everything advertised: FLUSH, FUA, TRIM, WRITE_ZEROES, FAST_ZERO.
    static let full = session()
    static let bare = session(flags: [])
    static let noFUA = session(flags: Fixtures.disk.flags.subtracting(.sendFUA))
    static let noFastZero = session(flags: Fixtures.disk.flags.subtracting(.sendFastZero))
    static let readOnly = session(flags: [.readOnly, .sendFlush, .sendFUA, .sendTrim, .sendWriteZeroes])
    static let smallMaximum = session(maximum: 65536)
    static let byteGranular = session(minimum: 1)

    struct Case: Sendable, CustomTestStringConvertible {
        var testDescription: String
        var request: RequestHeader
        var session: NegotiatedSession = RequestValidationTests.full
        var payloadDiscarded = false
        var expected: NBDErrorCode?
    }

    static func request(_ flags: CommandFlags, _ command: Command, _ offset: UInt64 = 0, _ length: UInt32 = 4096) -> RequestHeader {
        RequestHeader(flags: flags, command: command, cookie: 1, offset: offset, length: length)
    }

    static func request(_ command: Command, _ offset: UInt64 = 0, _ length: UInt32 = 4096) -> RequestHeader {
        request([], command, offset, length)
    }

    static let cases: [Case] = [
        // Unknown or unnegotiated commands: EINVAL.
        Case(testDescription: "command 42", request: request(Command(rawValue: 42)), expected: .invalid),
        Case(testDescription: "command 0xffff", request: request(Command(rawValue: .max)), expected: .invalid),
        Case(testDescription: "CACHE not advertised", request: request(.cache), expected: .invalid),
        Case(testDescription: "BLOCK_STATUS not negotiated", request: request(.blockStatus), expected: .invalid),
        Case(testDescription: "RESIZE", request: request(.resize), expected: .invalid),
        Case(testDescription: "FLUSH not advertised", request: request(.flush, 0, 0), session: bare, expected: .invalid),
        Case(testDescription: "TRIM not advertised", request: request(.trim), session: bare, expected: .invalid),
        Case(testDescription: "WRITE_ZEROES not advertised", request: request(.writeZeroes), session: bare, expected: .invalid),

        // Unknown or inapplicable flags: EINVAL.
        Case(testDescription: "flag bit 15 on READ", request: request(CommandFlags(rawValue: 1 << 15), .read), expected: .invalid),
        Case(testDescription: "flag bit 6 on WRITE", request: request(CommandFlags(rawValue: 1 << 6), .write), expected: .invalid),
        Case(testDescription: "NO_HOLE on WRITE", request: request(.noHole, .write), expected: .invalid),
        Case(testDescription: "NO_HOLE on READ", request: request(.noHole, .read), expected: .invalid),
        Case(testDescription: "NO_HOLE on TRIM", request: request(.noHole, .trim), expected: .invalid),
        Case(testDescription: "DF on READ (never advertised)", request: request(.dontFragment, .read), expected: .invalid),
        Case(testDescription: "REQ_ONE on READ", request: request(.requestOne, .read), expected: .invalid),
        Case(testDescription: "FAST_ZERO on WRITE", request: request(.fastZero, .write), expected: .invalid),
        Case(testDescription: "PAYLOAD_LEN on WRITE", request: request(.payloadLength, .write), expected: .invalid),
        Case(testDescription: "NO_HOLE on FLUSH", request: request(.noHole, .flush, 0, 0), expected: .invalid),
        Case(
            testDescription: "FAST_ZERO without SEND_FAST_ZERO", request: request(.fastZero, .writeZeroes), session: noFastZero,
            expected: .invalid),

        // FUA only when NBD_FLAG_SEND_FUA was advertised.
        Case(testDescription: "FUA on WRITE unadvertised", request: request(.fua, .write), session: noFUA, expected: .invalid),
        Case(testDescription: "FUA on TRIM unadvertised", request: request(.fua, .trim), session: noFUA, expected: .invalid),
        Case(
            testDescription: "FUA on WRITE_ZEROES unadvertised", request: request(.fua, .writeZeroes), session: noFUA,
            expected: .invalid),
        Case(testDescription: "FUA on READ unadvertised", request: request(.fua, .read), session: noFUA, expected: .invalid),
        Case(testDescription: "FUA on FLUSH unadvertised", request: request(.fua, .flush, 0, 0), session: noFUA, expected: .invalid),
        // "valid for all commands, provided NBD_FLAG_SEND_FUA has been negotiated,
        // in which case the server MUST accept all commands with this bit set".
        Case(testDescription: "FUA on READ advertised", request: request(.fua, .read), expected: nil),
        Case(testDescription: "FUA on FLUSH advertised", request: request(.fua, .flush, 0, 0), expected: nil),

        // Writes to a read-only export: EPERM.
        Case(testDescription: "WRITE read-only", request: request(.write), session: readOnly, expected: .permissionDenied),
        Case(testDescription: "WRITE+FUA read-only", request: request(.fua, .write), session: readOnly, expected: .permissionDenied),
        Case(testDescription: "TRIM read-only", request: request(.trim), session: readOnly, expected: .permissionDenied),
        Case(testDescription: "WRITE_ZEROES read-only", request: request(.writeZeroes), session: readOnly, expected: .permissionDenied),
        Case(testDescription: "READ read-only", request: request(.read), session: readOnly, expected: nil),
        Case(testDescription: "FLUSH read-only", request: request(.flush, 0, 0), session: readOnly, expected: nil),

        // Past the end: EINVAL for reads and trims, ENOSPC for writes.
        Case(testDescription: "READ past end", request: request(.read, end - 512, 1024), expected: .invalid),
        Case(testDescription: "READ at end", request: request(.read, end, 512), expected: .invalid),
        Case(testDescription: "TRIM past end", request: request(.trim, end - 512, 1024), expected: .invalid),
        Case(testDescription: "WRITE past end", request: request(.write, end - 512, 1024), expected: .noSpace),
        Case(testDescription: "WRITE at end", request: request(.write, end, 512), expected: .noSpace),
        Case(testDescription: "WRITE_ZEROES past end", request: request(.writeZeroes, end - 512, 1024), expected: .noSpace),
        Case(testDescription: "READ ending at end", request: request(.read, end - 4096), expected: nil),
        Case(testDescription: "WRITE ending at end", request: request(.write, end - 4096), expected: nil),

        // offset + length overflowing UInt64: the same errors as past the end.
        Case(testDescription: "READ overflowing", request: request(.read, .max - 511, 1024), expected: .invalid),
        Case(testDescription: "READ ending at 2^64", request: request(.read, .max - 511, 512), expected: .invalid),
        Case(testDescription: "TRIM overflowing", request: request(.trim, .max - 511, 1024), expected: .invalid),
        Case(testDescription: "WRITE overflowing", request: request(.write, .max - 511, 1024), expected: .noSpace),
        Case(testDescription: "WRITE_ZEROES overflowing", request: request(.writeZeroes, .max - 511, 1024), expected: .noSpace),

        // Misaligned to the minimum block size: EINVAL.
        Case(testDescription: "READ offset misaligned", request: request(.read, 100, 512), expected: .invalid),
        Case(testDescription: "READ length misaligned", request: request(.read, 0, 100), expected: .invalid),
        Case(testDescription: "WRITE offset misaligned", request: request(.write, 256, 512), expected: .invalid),
        Case(testDescription: "TRIM length misaligned", request: request(.trim, 0, 513), expected: .invalid),
        Case(testDescription: "WRITE_ZEROES offset misaligned", request: request(.writeZeroes, 1, 512), expected: .invalid),
        Case(testDescription: "READ of one byte, minimum 1", request: request(.read, 1, 1), session: byteGranular, expected: nil),

        // Zero length: EINVAL.
        Case(testDescription: "READ zero length", request: request(.read, 0, 0), expected: .invalid),
        Case(testDescription: "WRITE zero length", request: request(.write, 0, 0), expected: .invalid),
        Case(testDescription: "TRIM zero length", request: request(.trim, 0, 0), expected: .invalid),
        Case(testDescription: "WRITE_ZEROES zero length", request: request(.writeZeroes, 0, 0), expected: .invalid),

        // READ and WRITE above the maximum payload: EINVAL; effect-only commands may exceed it.
        Case(testDescription: "READ over maximum", request: request(.read, 0, 65536 + 512), session: smallMaximum, expected: .invalid),
        Case(testDescription: "WRITE over maximum", request: request(.write, 0, 65536 + 512), session: smallMaximum, expected: .invalid),
        Case(testDescription: "READ at maximum", request: request(.read, 0, 65536), session: smallMaximum, expected: nil),
        Case(testDescription: "TRIM over maximum", request: request(.trim, 0, 1 << 20), session: smallMaximum, expected: nil),
        Case(testDescription: "WRITE_ZEROES over maximum", request: request(.writeZeroes, 0, 1 << 20), session: smallMaximum, expected: nil),
        Case(testDescription: "READ over 32 MiB", request: request(.read, 0, (1 << 25) + 512), expected: .invalid),
        Case(testDescription: "WRITE over 32 MiB", request: request(.write, 0, (1 << 25) + 512), payloadDiscarded: true, expected: .invalid),
        Case(testDescription: "WRITE whose payload was discarded", request: request(.write), payloadDiscarded: true, expected: .invalid),

        // FLUSH carries no range.
        Case(testDescription: "FLUSH with offset", request: request(.flush, 512, 0), expected: .invalid),
        Case(testDescription: "FLUSH with length", request: request(.flush, 0, 512), expected: .invalid),

        // Valid requests.
        Case(testDescription: "FLUSH", request: request(.flush, 0, 0), expected: nil),
        Case(testDescription: "DISC", request: request(.disconnect, 0, 0), expected: nil),
        Case(testDescription: "READ", request: request(.read, 8192, 1 << 25), expected: nil),
        Case(testDescription: "WRITE", request: request(.write, 8192), expected: nil),
        Case(testDescription: "WRITE+FUA", request: request(.fua, .write), expected: nil),
        Case(testDescription: "TRIM", request: request(.trim, 512, 512), expected: nil),
        Case(testDescription: "TRIM+FUA", request: request(.fua, .trim), expected: nil),
        Case(testDescription: "WRITE_ZEROES", request: request(.writeZeroes, 0, 1 << 30), expected: nil),
        Case(testDescription: "WRITE_ZEROES+NO_HOLE", request: request(.noHole, .writeZeroes), expected: nil),
        Case(testDescription: "WRITE_ZEROES+FAST_ZERO", request: request(.fastZero, .writeZeroes), expected: nil),
        Case(testDescription: "WRITE_ZEROES+FUA+NO_HOLE+FAST_ZERO", request: request([.fua, .noHole, .fastZero], .writeZeroes), expected: nil),
    ]

    @Test(arguments: cases)
    func validateAnswersWithTheSpecifiedError(_ check: Case) {
        #expect(validate(check.request, payloadDiscarded: check.payloadDiscarded, session: check.session) == check.expected)
    }
}
