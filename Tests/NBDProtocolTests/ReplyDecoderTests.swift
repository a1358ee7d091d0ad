import NBDProtocol
import Testing

/// ReplyDecoder against a hostile server, and the legitimate multi-chunk
/// replies it must assemble.
@Suite struct ReplyDecoderTests {
    static func read(_ cookie: UInt64, _ offset: UInt64, _ length: UInt32) -> RequestHeader {
        RequestHeader(command: .read, cookie: cookie, offset: offset, length: length)
    }

    static func write(_ cookie: UInt64) -> RequestHeader {
        RequestHeader(command: .write, cookie: cookie, offset: 0, length: 512)
    }

    /// The READ most tests reply to: 4096 bytes at 4096.
    let read1 = Self.read(1, 4096, 4096)

    func bytes(_ count: Int, _ value: UInt8 = 0xa5) -> [UInt8] { [UInt8](repeating: value, count: count) }

    func isMalformed(_ outcome: Decoded<ReplyEvent>, cookie: UInt64) -> Bool {
        if case .malformedChunk(cookie, _) = outcome.error { return true }
        return false
    }

    // MARK: Cookies

    @Test func simpleReplyForAnUnknownCookieThrows() {
        let outcome = decodeReplies(Wire.simpleReply(cookie: 2), structured: false, expecting: [read1])
        #expect(outcome.events.isEmpty)
        #expect(outcome.error == .unknownCookie(2))
    }

    @Test func chunkForAnUnknownCookieThrows() {
        let outcome = decodeReplies(Wire.noneChunk(cookie: 2), structured: true, expecting: [Self.write(1)])
        #expect(outcome.error == .unknownCookie(2))
    }

    @Test(arguments: [false, true])
    func replyWhenNothingWasSentThrows(structured: Bool) {
        let input = structured ? Wire.noneChunk(cookie: 0) : Wire.simpleReply(cookie: 0)
        #expect(decodeReplies(input, structured: structured, expecting: []).error == .unknownCookie(0))
    }

    @Test(arguments: [false, true])
    func secondReplyToAFinishedRequestThrows(structured: Bool) {
        let reply = structured ? Wire.noneChunk(cookie: 1) : Wire.simpleReply(cookie: 1)
        let outcome = decodeReplies(reply + reply, structured: structured, expecting: [Self.write(1)])
        #expect(outcome.events == [.completed(cookie: 1, error: nil, message: "")])
        #expect(outcome.error == .unknownCookie(1))
    }

    @Test func inFlightRequestsAreTracked() throws {
        var decoder = ReplyDecoder(structuredReplies: true)
        decoder.expect(Self.write(2))
        decoder.expect(read1)
        #expect(decoder.inFlightCount == 2)
        decoder.receive(Wire.simpleReply(cookie: 2))
        #expect(try decoder.next() == .completed(cookie: 2, error: nil, message: ""))
        #expect(!decoder.isInFlight(2))
        #expect(decoder.isInFlight(read1.cookie))
        #expect(decoder.inFlightCount == 1)
        // Once finished, a cookie may be reused.
        decoder.expect(Self.write(2))
        #expect(decoder.inFlightCount == 2)
    }

    // MARK: Framing

    @Test(arguments: [UInt32(0x1234_5678), 0x2560_9513, 0x6744_6699, 0])
    func badMagicThrowsFromItsFirstFourBytes(magic: UInt32) {
        let outcome = decodeReplies(be(magic), structured: true, expecting: [read1])
        #expect(outcome.error == .badReplyMagic(magic))
    }

    @Test func badMagicAfterAGoodReplyThrows() {
        let outcome = decodeReplies(
            Wire.simpleReply(cookie: 1) + [0xde, 0xad, 0xbe, 0xef], structured: false, expecting: [Self.write(1)])
        #expect(outcome.events == [.completed(cookie: 1, error: nil, message: "")])
        #expect(outcome.error == .badReplyMagic(0xdead_beef))
    }

    @Test func structuredChunkWithoutNegotiationThrows() {
        let outcome = decodeReplies(Wire.noneChunk(cookie: 1), structured: false, expecting: [Self.write(1)])
        #expect(outcome.error == .unexpectedStructuredReply(cookie: 1))
    }

    @Test(arguments: [UInt32(0), 5])
    func simpleReplyToAReadUnderStructuredRepliesThrows(error: UInt32) {
        let outcome = decodeReplies(Wire.simpleReply(error: error, cookie: 1) + bytes(4096), structured: true, expecting: [read1])
        #expect(outcome.error == .simpleReplyToStructuredRead(cookie: 1))
    }

    @Test(arguments: [NBDLimits.maxPayload, 4096])
    func chunkLongerThanThePayloadLimitThrowsOnItsHeaderAlone(maxPayload: UInt32) {
        let limit = maxPayload + NBDLimits.maxChunkOverhead
        for length in [limit + 1, .max] {
            // Only the header: the decoder must not wait for, or store, the body.
            let header = Wire.chunkHeader(done: true, type: 1, cookie: 1, length: length)
            let outcome = decodeReplies(header, structured: true, expecting: [read1], maxPayload: maxPayload)
            #expect(outcome.error == .chunkTooLong(cookie: 1, length: length, limit: limit))
        }
        let atLimit = Wire.chunkHeader(done: true, type: 1, cookie: 1, length: limit)
        let waiting = decodeReplies(atLimit, structured: true, expecting: [read1], maxPayload: maxPayload)
        #expect(waiting.error == nil)
        #expect(waiting.events.isEmpty)
    }

    // MARK: Content chunks

    struct OutOfRange: Sendable, CustomTestStringConvertible {
        var testDescription: String
        var chunk: [UInt8]
        var offset: UInt64
        var length: UInt64
    }

    static let outOfRange: [OutOfRange] = [
        OutOfRange(testDescription: "data before the request", chunk: Wire.dataChunk(cookie: 1, offset: 0, [UInt8](repeating: 1, count: 512)), offset: 0, length: 512),
        OutOfRange(testDescription: "data straddling the start", chunk: Wire.dataChunk(cookie: 1, offset: 4095, [1, 2]), offset: 4095, length: 2),
        OutOfRange(testDescription: "data just past the end", chunk: Wire.dataChunk(cookie: 1, offset: 8192, [1]), offset: 8192, length: 1),
        OutOfRange(testDescription: "data straddling the end", chunk: Wire.dataChunk(cookie: 1, offset: 7680, [UInt8](repeating: 1, count: 1024)), offset: 7680, length: 1024),
        OutOfRange(testDescription: "data at 2^64-1", chunk: Wire.dataChunk(cookie: 1, offset: .max, [1]), offset: .max, length: 1),
        OutOfRange(testDescription: "hole past the end", chunk: Wire.holeChunk(cookie: 1, offset: 8192, length: 1), offset: 8192, length: 1),
        OutOfRange(testDescription: "hole longer than the request", chunk: Wire.holeChunk(cookie: 1, offset: 4096, length: 4097), offset: 4096, length: 4097),
        OutOfRange(testDescription: "hole of length 0", chunk: Wire.holeChunk(cookie: 1, offset: 4096, length: 0), offset: 4096, length: 0),
        OutOfRange(testDescription: "hole wrapping 2^64", chunk: Wire.holeChunk(cookie: 1, offset: .max - 10, length: 100), offset: .max - 10, length: 100),
        OutOfRange(testDescription: "error offset past the end", chunk: Wire.errorChunk(cookie: 1, error: 5, offset: 8192), offset: 8192, length: 1),
        OutOfRange(testDescription: "error offset before the start", chunk: Wire.errorChunk(cookie: 1, error: 5, offset: 0), offset: 0, length: 1),
    ]

    @Test(arguments: outOfRange)
    func chunkOutsideTheRequestThrows(_ check: OutOfRange) {
        let outcome = decodeReplies(check.chunk, structured: true, expecting: [read1])
        #expect(outcome.events.isEmpty)
        #expect(outcome.error == .readOutOfRange(cookie: 1, offset: check.offset, length: check.length))
    }

    @Test func overlappingDataChunksThrow() {
        let input = Wire.dataChunk(cookie: 1, offset: 4096, bytes(1024)) + Wire.dataChunk(cookie: 1, offset: 4608, bytes(1024))
        let outcome = decodeReplies(input, structured: true, expecting: [read1])
        #expect(outcome.events == [.data(cookie: 1, offset: 0, bytes: bytes(1024))])
        #expect(outcome.error == .overlappingReadChunks(cookie: 1, offset: 4608))
    }

    @Test func holeOverlappingDataThrows() {
        let input = Wire.dataChunk(cookie: 1, offset: 6144, bytes(1024)) + Wire.holeChunk(cookie: 1, offset: 4096, length: 2049)
        let outcome = decodeReplies(input, structured: true, expecting: [read1])
        #expect(outcome.error == .overlappingReadChunks(cookie: 1, offset: 4096))
    }

    @Test func repeatedChunkThrows() {
        let chunk = Wire.holeChunk(cookie: 1, offset: 5000, length: 10)
        let outcome = decodeReplies(chunk + chunk, structured: true, expecting: [read1])
        #expect(outcome.events == [.hole(cookie: 1, offset: 904, length: 10)])
        #expect(outcome.error == .overlappingReadChunks(cookie: 1, offset: 5000))
    }

    @Test(arguments: [8, 11, 13, 16])
    func holeChunkOfTheWrongLengthThrows(length: Int) {
        let body = Array((be(UInt64(4096)) + be(UInt32(512)) + bytes(8, 0)).prefix(length))
        let outcome = decodeReplies(Wire.chunk(done: true, type: 2, cookie: 1, body), structured: true, expecting: [read1])
        #expect(isMalformed(outcome, cookie: 1))
    }

    @Test(arguments: [0, 7, 8])
    func dataChunkWithoutDataThrows(length: Int) {
        let body = Array(be(UInt64(4096)).prefix(length))
        let outcome = decodeReplies(Wire.chunk(done: true, type: 1, cookie: 1, body), structured: true, expecting: [read1])
        #expect(isMalformed(outcome, cookie: 1))
    }

    @Test(arguments: [UInt16(1), 2])
    func contentChunkForANonReadThrows(type: UInt16) {
        let body = be(UInt64(0)) + be(UInt32(512))
        let outcome = decodeReplies(Wire.chunk(done: true, type: type, cookie: 1, body), structured: true, expecting: [Self.write(1)])
        #expect(isMalformed(outcome, cookie: 1))
    }

    @Test func doneWithIncompleteCoverageThrows() {
        let partial = Wire.dataChunk(cookie: 1, offset: 4096, bytes(1024), done: true)
        let outcome = decodeReplies(partial, structured: true, expecting: [read1])
        #expect(outcome.error == .incompleteRead(cookie: 1, received: 1024, expected: 4096))

        let holes = Wire.holeChunk(cookie: 1, offset: 4096, length: 1024) + Wire.holeChunk(cookie: 1, offset: 6144, length: 2048)
        let gap = decodeReplies(holes + Wire.noneChunk(cookie: 1), structured: true, expecting: [read1])
        #expect(gap.error == .incompleteRead(cookie: 1, received: 3072, expected: 4096))

        let nothing = decodeReplies(Wire.noneChunk(cookie: 1), structured: true, expecting: [read1])
        #expect(nothing.error == .incompleteRead(cookie: 1, received: 0, expected: 4096))
    }

    @Test func overlapIsFoundAcrossWordBoundaries() {
        let request = Self.read(1, 1000, 200)
        let pieces: [(UInt64, Int)] = [(1063, 1), (1000, 63), (1130, 70), (1064, 66)]
        let whole = pieces.flatMap { Wire.dataChunk(cookie: 1, offset: $0.0, bytes($0.1)) } + Wire.noneChunk(cookie: 1)
        #expect(decodeReplies(whole, structured: true, expecting: [request]).error == nil)

        for (offset, length) in [(UInt64(1063), 1), (1127, 2), (1129, 1), (1000, 200), (1190, 10)] {
            let input = pieces.flatMap { Wire.dataChunk(cookie: 1, offset: $0.0, bytes($0.1)) }
            let overlapping = input + Wire.dataChunk(cookie: 1, offset: offset, bytes(length))
            let outcome = decodeReplies(overlapping, structured: true, expecting: [request])
            #expect(outcome.error == .overlappingReadChunks(cookie: 1, offset: offset))
        }
        // After a chunk with all of it, any further chunk overlaps.
        let all = Wire.dataChunk(cookie: 1, offset: 1000, bytes(200)) + Wire.holeChunk(cookie: 1, offset: 1199, length: 1)
        #expect(decodeReplies(all, structured: true, expecting: [request]).error == .overlappingReadChunks(cookie: 1, offset: 1199))
    }

    /// A hostile server may split a READ into one chunk per byte, in any
    /// order; checking each chunk must not cost time in proportion to the
    /// chunks before it (quadratically many comparisons used to take about
    /// three minutes for this reply in a debug build).
    @Test func oneByteChunksInAnyOrderAreCheckedInLinearTime() throws {
        let length = 32768
        var input: [UInt8] = []
        // Every other byte backwards, then the rest forwards.
        for offset in stride(from: length - 2, through: 0, by: -2) { input += Wire.holeChunk(cookie: 1, offset: UInt64(offset), length: 1) }
        for offset in stride(from: 1, to: length, by: 2) { input += Wire.dataChunk(cookie: 1, offset: UInt64(offset), [7]) }
        input += Wire.noneChunk(cookie: 1)

        var decoder = ReplyDecoder(structuredReplies: true)
        decoder.expect(Self.read(1, 0, UInt32(length)))
        let clock = ContinuousClock()
        var events = 0
        let elapsed = try clock.measure {
            decoder.receive(input)
            while try decoder.next() != nil { events += 1 }
        }
        #expect(events == length + 1)
        #expect(decoder.inFlightCount == 0)
        #expect(elapsed < .seconds(10))
    }

    // MARK: Error chunks

    @Test(arguments: [false, true])
    func errorChunkWithErrorZeroThrows(withOffset: Bool) {
        let chunk = Wire.errorChunk(cookie: 1, error: 0, message: "fine", offset: withOffset ? 4096 : nil)
        #expect(isMalformed(decodeReplies(chunk, structured: true, expecting: [read1]), cookie: 1))
    }

    @Test func errorMessageLengthPastTheBodyThrows() {
        let overlong = be(UInt32(5)) + be(UInt16(10)) + Array("abc".utf8)
        #expect(isMalformed(decodeReplies(Wire.chunk(done: true, type: 0x8001, cookie: 1, overlong), structured: true, expecting: [read1]), cookie: 1))

        // The message fits, but the offset that must follow it does not.
        let noRoomForOffset = be(UInt32(5)) + be(UInt16(3)) + Array("abc".utf8) + be(UInt32(4096))
        #expect(isMalformed(decodeReplies(Wire.chunk(done: true, type: 0x8002, cookie: 1, noRoomForOffset), structured: true, expecting: [read1]), cookie: 1))

        // An unknown error type is held to the same rule.
        #expect(isMalformed(decodeReplies(Wire.chunk(done: true, type: 0x8123, cookie: 1, overlong), structured: true, expecting: [read1]), cookie: 1))
    }

    @Test(arguments: [0, 4, 5])
    func errorChunkShorterThanItsFixedFieldsThrows(length: Int) {
        let body = Array((be(UInt32(5)) + be(UInt16(0))).prefix(length))
        #expect(isMalformed(decodeReplies(Wire.chunk(done: true, type: 0x8001, cookie: 1, body), structured: true, expecting: [read1]), cookie: 1))
    }

    @Test func unknownErrorChunkTypeFailsTheRequest() {
        let body = be(UInt32(95)) + be(UInt16(4)) + Array("odd!".utf8) + [1, 2, 3]
        let outcome = decodeReplies(Wire.chunk(done: true, type: 0x8003, cookie: 1, body), structured: true, expecting: [read1])
        #expect(outcome.error == nil)
        #expect(outcome.events == [.completed(cookie: 1, error: .notSupported, message: "odd!")])
    }

    // MARK: Other chunk types

    @Test func noneChunkWithDataOrWithoutDoneThrows() {
        let withData = Wire.chunk(done: true, type: 0, cookie: 1, [0])
        #expect(isMalformed(decodeReplies(withData, structured: true, expecting: [Self.write(1)]), cookie: 1))
        let notDone = Wire.chunk(done: false, type: 0, cookie: 1, [])
        #expect(isMalformed(decodeReplies(notDone, structured: true, expecting: [Self.write(1)]), cookie: 1))
    }

    @Test(arguments: [UInt16(3), 4, 5, 6, 0x7fff])
    func unknownNonErrorChunkTypeThrows(type: UInt16) {
        let chunk = Wire.chunk(done: true, type: type, cookie: 1, be(UInt32(0)) + be(UInt32(4096)) + be(UInt32(0)))
        #expect(isMalformed(decodeReplies(chunk, structured: true, expecting: [read1]), cookie: 1))
    }

    // MARK: Legitimate multi-chunk replies

    @Test func chunksAreAssembledInAnyOrder() {
        let request = Self.read(5, 8192, 4096)
        let tail = bytes(2048, 0x22)
        let middle = bytes(1024, 0x11)
        let input =
            Wire.dataChunk(cookie: 5, offset: 8192 + 2048, tail) + Wire.holeChunk(cookie: 5, offset: 8192, length: 1024)
            + Wire.dataChunk(cookie: 5, offset: 8192 + 1024, middle) + Wire.noneChunk(cookie: 5)
        let outcome = decodeReplies(input, structured: true, expecting: [request])
        #expect(outcome.error == nil)
        #expect(
            outcome.events == [
                .data(cookie: 5, offset: 2048, bytes: tail), .hole(cookie: 5, offset: 0, length: 1024),
                .data(cookie: 5, offset: 1024, bytes: middle), .completed(cookie: 5, error: nil, message: ""),
            ])
    }

    @Test func dataAndHolesMixWithDoneOnTheLastContentChunk() {
        let input =
            Wire.holeChunk(cookie: 1, offset: 4096, length: 512) + Wire.dataChunk(cookie: 1, offset: 4608, bytes(512))
            + Wire.holeChunk(cookie: 1, offset: 6144, length: 2048) + Wire.dataChunk(cookie: 1, offset: 5120, bytes(1024), done: true)
        let outcome = decodeReplies(input, structured: true, expecting: [read1])
        #expect(
            outcome.events == [
                .hole(cookie: 1, offset: 0, length: 512), .data(cookie: 1, offset: 512, bytes: bytes(512)),
                .hole(cookie: 1, offset: 2048, length: 2048), .data(cookie: 1, offset: 1024, bytes: bytes(1024)),
                .completed(cookie: 1, error: nil, message: ""),
            ])
    }

    @Test func interleavedRepliesForSeveralCookies() throws {
        let requests = [
            Self.read(1, 0, 1024), Self.write(2), Self.read(3, 4096, 512),
            RequestHeader(command: .flush, cookie: 4, offset: 0, length: 0),
        ]
        let input =
            Wire.dataChunk(cookie: 1, offset: 0, bytes(512, 1)) + Wire.dataChunk(cookie: 3, offset: 4096, bytes(512, 3))
            + Wire.simpleReply(cookie: 2) + Wire.holeChunk(cookie: 1, offset: 512, length: 512, done: true)
            + Wire.errorChunk(cookie: 4, error: 5, message: "flush failed") + Wire.noneChunk(cookie: 3)
        let outcome = decodeReplies(input, structured: true, expecting: requests)
        #expect(outcome.error == nil)
        #expect(
            outcome.events == [
                .data(cookie: 1, offset: 0, bytes: bytes(512, 1)), .data(cookie: 3, offset: 0, bytes: bytes(512, 3)),
                .completed(cookie: 2, error: nil, message: ""), .hole(cookie: 1, offset: 512, length: 512),
                .completed(cookie: 1, error: nil, message: ""), .completed(cookie: 4, error: .ioError, message: "flush failed"),
                .completed(cookie: 3, error: nil, message: ""),
            ])

        var decoder = ReplyDecoder(structuredReplies: true)
        for request in requests { decoder.expect(request) }
        decoder.receive(input)
        while try decoder.next() != nil {}
        #expect(decoder.inFlightCount == 0)
    }

    @Test func anErrorExcusesMissingDataAndTheFirstErrorWins() {
        let input =
            Wire.dataChunk(cookie: 1, offset: 4096, bytes(512)) + Wire.errorChunk(cookie: 1, error: 5, message: "bad sector", done: false)
            + Wire.dataChunk(cookie: 1, offset: 5120, bytes(512))
            + Wire.errorChunk(cookie: 1, error: 28, message: "later", offset: 5120, done: false) + Wire.noneChunk(cookie: 1)
        let outcome = decodeReplies(input, structured: true, expecting: [read1])
        #expect(outcome.error == nil)
        #expect(
            outcome.events == [
                .data(cookie: 1, offset: 0, bytes: bytes(512)), .data(cookie: 1, offset: 1024, bytes: bytes(512)),
                .completed(cookie: 1, error: .ioError, message: "bad sector"),
            ])
    }

    /// What a finished request left beside the table (its coverage of a
    /// split reply, its error message) is gone with it: the same cookie,
    /// sent again, starts clean.
    @Test func aCookieSentAgainStartsWithNoCoverageAndNoMessage() throws {
        var decoder = ReplyDecoder(structuredReplies: true)
        func reply(_ bytes: [UInt8]) throws -> [ReplyEvent] {
            decoder.receive(bytes)
            var events: [ReplyEvent] = []
            while let event = try decoder.next() { events.append(event) }
            return events
        }
        for _ in 0..<2 {
            decoder.expect(read1)
            let split = try reply(
                Wire.dataChunk(cookie: 1, offset: 4096, bytes(2048)) + Wire.dataChunk(cookie: 1, offset: 6144, bytes(2048), done: true))
            #expect(split.last == .completed(cookie: 1, error: nil, message: ""))
        }
        decoder.expect(read1)
        #expect(try reply(Wire.errorChunk(cookie: 1, error: 5, message: "bad sector")) == [.completed(cookie: 1, error: .ioError, message: "bad sector")])
        decoder.expect(read1)
        #expect(try reply(Wire.errorChunk(cookie: 1, error: 5, message: "")) == [.completed(cookie: 1, error: .ioError, message: "")])
        #expect(decoder.inFlightCount == 0)
    }

    @Test func errorWithOffsetInsideTheRequestFailsIt() {
        let chunk = Wire.errorChunk(cookie: 1, error: 5, message: "at 5000", offset: 5000)
        let outcome = decodeReplies(chunk, structured: true, expecting: [read1])
        #expect(outcome.events == [.completed(cookie: 1, error: .ioError, message: "at 5000")])
    }

    @Test func simpleReadPayloadIsTakenFromTheRequestLength() {
        let data = bytes(4096, 0x67)  // bytes that look like simple reply magic
        let input = Wire.simpleReply(cookie: 1) + data + Wire.simpleReply(error: 22, cookie: 2)
        let outcome = decodeReplies(input, structured: false, expecting: [read1, Self.read(2, 0, 512)])
        #expect(
            outcome.events == [
                .data(cookie: 1, offset: 0, bytes: data), .completed(cookie: 1, error: nil, message: ""),
                .completed(cookie: 2, error: .invalid, message: ""),
            ])
    }
}
