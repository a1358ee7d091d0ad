import NBDProtocol
import TestSupport
import Testing

@Suite struct RequestDecoderTests {
    struct Expected: Equatable {
        var header: RequestHeader
        var payload: [UInt8] = []
        var discarded = false
    }

    func decoded(_ outcome: Decoded<IncomingRequest>) -> [Expected] {
        outcome.events.map { Expected(header: $0.header, payload: Array($0.payload), discarded: $0.payloadDiscarded) }
    }

    static let commands: [Command] = [
        .read, .write, .disconnect, .flush, .trim, .cache, .writeZeroes, .blockStatus, .resize, Command(rawValue: 42),
        Command(rawValue: .max),
    ]

    @Test(arguments: commands)
    func everyCommandDecodesAndOnlyWriteCarriesAPayload(command: Command) {
        let payload: [UInt8] = command == .write ? (0..<64).map { UInt8($0) } : []
        let follower = Wire.request(.flush, cookie: 2)
        let input =
            Wire.request(flags: 0b1_0101, command, cookie: 0x0102_0304_0506_0708, offset: 0x1122_3344_5566_7788, length: 64)
            + payload + follower
        let outcome = decodeRequests(input)
        #expect(outcome.error == nil)
        #expect(
            decoded(outcome) == [
                Expected(
                    header: RequestHeader(
                        flags: CommandFlags(rawValue: 0b1_0101), command: command, cookie: 0x0102_0304_0506_0708,
                        offset: 0x1122_3344_5566_7788, length: 64),
                    payload: payload),
                Expected(header: RequestHeader(command: .flush, cookie: 2, offset: 0, length: 0)),
            ])
    }

    @Test func writePayloadsOfEverySizeDecode() {
        let lengths: [UInt32] = [0, 1, 27, 28, 29, 512, 4096, 65536 + 3]
        var input: [UInt8] = []
        var expected: [Expected] = []
        for (index, length) in lengths.enumerated() {
            // Payloads that look like request headers must still be taken as data.
            let payload = Array(
                [[UInt8]](repeating: Wire.request(.disconnect, cookie: 9), count: Int(length) / 28 + 1).joined().prefix(Int(length)))
            let header = RequestHeader(command: .write, cookie: UInt64(index), offset: UInt64(index) << 20, length: length)
            input += Wire.request(.write, cookie: UInt64(index), offset: UInt64(index) << 20, length: length) + payload
            expected.append(Expected(header: header, payload: payload))
        }
        #expect(decoded(decodeRequests(input)) == expected)
    }

    @Test func manyPipelinedRequestsInOneBatch() {
        var generator = SeededGenerator(seed: 42)
        var input: [UInt8] = []
        var expected: [Expected] = []
        for cookie in 0..<300 {
            let command = [Command.read, .write, .write, .flush, .trim, .writeZeroes].randomElement(using: &generator)!
            let length = UInt32.random(in: 0...3000, using: &generator)
            let offset = UInt64.random(in: 0...(1 << 40), using: &generator)
            let header = RequestHeader(command: command, cookie: UInt64(cookie), offset: offset, length: length)
            var payload: [UInt8] = []
            if command == .write { payload = (0..<length).map { _ in UInt8.random(in: 0...255, using: &generator) } }
            header.encode(into: &input)
            input += payload
            expected.append(Expected(header: header, payload: payload))
        }
        let outcome = decodeRequests(input)
        #expect(outcome.error == nil)
        #expect(decoded(outcome) == expected)

        var decoder = RequestDecoder()
        decoder.receive(input)
        var count = 0
        while (try? decoder.next()) != nil { count += 1 }
        #expect(count == 300)
        #expect(decoder.bufferedCount == 0)
    }

    @Test func incompleteRequestWaits() throws {
        var decoder = RequestDecoder()
        let request = Wire.request(.write, cookie: 1, offset: 0, length: 4) + [1, 2, 3, 4]
        decoder.receive(request.prefix(27))
        #expect(try decoder.next() == nil)
        #expect(decoder.bufferedCount == 27)
        decoder.receive(request[27..<30])
        #expect(try decoder.next() == nil)
        #expect(decoder.bufferedCount == 2)
        decoder.receive(request[30...])
        #expect(try decoder.next().map { Array($0.payload) } == [1, 2, 3, 4])
        #expect(try decoder.next() == nil)
    }

    @Test(arguments: [UInt32(0x2560_9514), 0x6744_6698, 0, .max])
    func badMagicThrows(magic: UInt32) {
        let bad = be(magic) + Array(Wire.request(.read, cookie: 2, length: 512).dropFirst(4))
        let outcome = decodeRequests(Wire.request(.read, cookie: 1, length: 512) + bad)
        #expect(decoded(outcome) == [Expected(header: RequestHeader(command: .read, cookie: 1, offset: 0, length: 512))])
        #expect(outcome.error == .badRequestMagic(magic))
    }

    @Test func writeOverTheLimitIsReportedAtOnceAndItsPayloadSkipped() {
        // 5040 bytes of what would decode as NBD_CMD_DISC requests if it were parsed.
        let payload = [[UInt8]](repeating: Wire.request(.disconnect, cookie: 77), count: 180).flatMap { $0 }
        let input =
            Wire.request(.write, cookie: 1, offset: 0, length: UInt32(payload.count)) + payload
            + Wire.request(.read, cookie: 2, offset: 512, length: 512)
        let outcome = decodeRequests(input, maxPayload: 1024)
        #expect(outcome.error == nil)
        #expect(
            decoded(outcome) == [
                Expected(header: RequestHeader(command: .write, cookie: 1, offset: 0, length: 5040), discarded: true),
                Expected(header: RequestHeader(command: .read, cookie: 2, offset: 512, length: 512)),
            ])
    }

    @Test func writeOfExactlyTheLimitIsAccepted() {
        let payload = [UInt8](repeating: 0xab, count: 1024)
        let outcome = decodeRequests(Wire.request(.write, cookie: 1, length: 1024) + payload, maxPayload: 1024)
        #expect(decoded(outcome) == [Expected(header: RequestHeader(command: .write, cookie: 1, offset: 0, length: 1024), payload: payload)])
    }

    @Test func writeOverTheDefaultLimitIsNeverBuffered() throws {
        var decoder = RequestDecoder()
        let length = NBDLimits.maxPayload + 1
        decoder.receive(Wire.request(.write, cookie: 1, offset: 0, length: length))
        let write = try decoder.next()
        #expect(write?.payloadDiscarded == true)
        #expect(write?.payload.isEmpty == true)
        #expect(write?.header.length == length)

        let piece = [UInt8](repeating: 0x25, count: 1 << 20)
        for _ in 0..<(Int(length) >> 20) {
            decoder.receive(piece)
            #expect(try decoder.next() == nil)
            #expect(decoder.bufferedCount == 0)
        }
        decoder.receive([0x25] + Wire.request(.flush, cookie: 2))
        #expect(try decoder.next()?.header == RequestHeader(command: .flush, cookie: 2, offset: 0, length: 0))
        #expect(decoder.bufferedCount == 0)
    }

    @Test func encodeWritesTheWireLayout() {
        var bytes: [UInt8] = []
        RequestHeader(flags: [.fua, .noHole], command: .writeZeroes, cookie: 0xdead_beef_0000_0001, offset: 1 << 33, length: 1 << 20)
            .encode(into: &bytes)
        #expect(
            bytes == [
                0x25, 0x60, 0x95, 0x13,  // NBD_REQUEST_MAGIC
                0x00, 0x03,  // FUA | NO_HOLE
                0x00, 0x06,  // NBD_CMD_WRITE_ZEROES
                0xde, 0xad, 0xbe, 0xef, 0x00, 0x00, 0x00, 0x01,  // cookie
                0x00, 0x00, 0x00, 0x02, 0x00, 0x00, 0x00, 0x00,  // offset
                0x00, 0x10, 0x00, 0x00,  // length
            ])
    }

    @Test func randomHeadersRoundTripThroughEncode() {
        var generator = SeededGenerator(seed: 7)
        var input: [UInt8] = []
        var expected: [Expected] = []
        for _ in 0..<500 {
            let command = Command(rawValue: UInt16.random(in: 0...9, using: &generator))
            let length = command == .write ? UInt32.random(in: 0...600, using: &generator) : UInt32.random(in: 0...UInt32.max, using: &generator)
            let header = RequestHeader(
                flags: CommandFlags(rawValue: .random(in: 0...UInt16.max, using: &generator)), command: command,
                cookie: .random(in: 0...UInt64.max, using: &generator), offset: .random(in: 0...UInt64.max, using: &generator),
                length: length)
            let payload = command == .write ? [UInt8](repeating: UInt8(truncatingIfNeeded: length), count: Int(length)) : []
            header.encode(into: &input)
            input += payload
            expected.append(Expected(header: header, payload: payload))
        }
        #expect(decoded(decodeRequests(input)) == expected)
    }
}
