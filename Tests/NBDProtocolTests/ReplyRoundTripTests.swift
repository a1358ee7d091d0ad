import NBDProtocol
import TestSupport
import Testing

/// ReplyEncoder's output read back by ReplyDecoder.
@Suite struct ReplyRoundTripTests {
    static func readReply(cookie: UInt64, offset: UInt64, data: [UInt8], structured: Bool) -> [UInt8] {
        let headerLength = ReplyEncoder.readReplyHeaderLength(structured: structured)
        var bytes = [UInt8](repeating: 0xee, count: headerLength + data.count)
        bytes.withUnsafeMutableBytes { buffer in
            ReplyEncoder.encodeReadReplyHeader(
                into: buffer, cookie: cookie, offset: offset, length: UInt32(data.count), structured: structured)
        }
        bytes.replaceSubrange(headerLength..., with: data)
        return bytes
    }

    static func read(_ cookie: UInt64, _ offset: UInt64, _ length: UInt32) -> RequestHeader {
        RequestHeader(command: .read, cookie: cookie, offset: offset, length: length)
    }

    static func data(_ count: Int, seed: UInt64 = 1) -> [UInt8] {
        var generator = SeededGenerator(seed: seed)
        return (0..<count).map { _ in UInt8.random(in: 0...255, using: &generator) }
    }

    @Test func readReplyHeadersHaveTheWireLayout() {
        #expect(ReplyEncoder.readReplyHeaderLength(structured: false) == 16)
        #expect(ReplyEncoder.readReplyHeaderLength(structured: true) == 28)
        let simple = Self.readReply(cookie: 0x0102_0304_0506_0708, offset: 4096, data: [9, 9], structured: false)
        #expect(simple == Wire.simpleReply(cookie: 0x0102_0304_0506_0708) + [9, 9])
        let structured = Self.readReply(cookie: 0x0102_0304_0506_0708, offset: 4096, data: [9, 9], structured: true)
        #expect(structured == Wire.dataChunk(cookie: 0x0102_0304_0506_0708, offset: 4096, [9, 9], done: true))
    }

    @Test(arguments: [false, true])
    func readRoundTrips(structured: Bool) {
        let data = Self.data(4096)
        let input = Self.readReply(cookie: 7, offset: 8192, data: data, structured: structured)
        let outcome = decodeReplies(input, structured: structured, expecting: [Self.read(7, 8192, 4096)])
        #expect(outcome.error == nil)
        #expect(outcome.events == [.data(cookie: 7, offset: 0, bytes: data), .completed(cookie: 7, error: nil, message: "")])
    }

    @Test(arguments: [Command.write, .flush, .trim, .writeZeroes, .cache], [false, true])
    func successOfANonReadIsASimpleReply(command: Command, structured: Bool) {
        let bytes = ReplyEncoder.completion(cookie: 3, error: nil, command: command, structured: structured)
        #expect(bytes == Wire.simpleReply(cookie: 3))
        let request = RequestHeader(command: command, cookie: 3, offset: 0, length: 512)
        let outcome = decodeReplies(bytes, structured: structured, expecting: [request])
        #expect(outcome.events == [.completed(cookie: 3, error: nil, message: "")])
    }

    @Test func structuredReadCompletionIsANoneChunk() {
        #expect(ReplyEncoder.completion(cookie: 5, error: nil, command: .read, structured: true) == Wire.noneChunk(cookie: 5))
        // Data delivered in chunks without DONE, then the completion.
        let data = Self.data(1024)
        let input =
            Wire.dataChunk(cookie: 5, offset: 512, Array(data[512...])) + Wire.dataChunk(cookie: 5, offset: 0, Array(data[..<512]))
            + ReplyEncoder.completion(cookie: 5, error: nil, command: .read, structured: true)
        let outcome = decodeReplies(input, structured: true, expecting: [Self.read(5, 0, 1024)])
        #expect(
            outcome.events == [
                .data(cookie: 5, offset: 512, bytes: Array(data[512...])), .data(cookie: 5, offset: 0, bytes: Array(data[..<512])),
                .completed(cookie: 5, error: nil, message: ""),
            ])
    }

    static let errors: [NBDErrorCode] = [
        .permissionDenied, .ioError, .outOfMemory, .invalid, .noSpace, .overflow, .notSupported, .shutdown,
        NBDErrorCode(rawValue: 12345),
    ]

    @Test(arguments: errors, [Command.read, .write, .trim, .flush])
    func errorsRoundTripWithTheirMessageUnderStructuredReplies(error: NBDErrorCode, command: Command) {
        let bytes = ReplyEncoder.completion(cookie: 9, error: error, message: "disk on fire", command: command, structured: true)
        #expect(bytes == Wire.errorChunk(cookie: 9, error: error.rawValue, message: "disk on fire"))
        let request = RequestHeader(command: command, cookie: 9, offset: 0, length: 512)
        let outcome = decodeReplies(bytes, structured: true, expecting: [request])
        #expect(outcome.events == [.completed(cookie: 9, error: error, message: "disk on fire")])
    }

    @Test(arguments: errors, [Command.read, .write, .trim, .flush])
    func errorsRoundTripWithoutMessageInSimpleReplies(error: NBDErrorCode, command: Command) {
        let bytes = ReplyEncoder.completion(cookie: 9, error: error, message: "lost", command: command, structured: false)
        #expect(bytes == Wire.simpleReply(error: error.rawValue, cookie: 9))
        // A failed simple READ carries no payload: the next reply follows at once.
        let input = bytes + Wire.simpleReply(cookie: 10)
        let requests = [RequestHeader(command: command, cookie: 9, offset: 0, length: 512), Self.read(10, 0, 2)]
        let outcome = decodeReplies(input + [1, 2], structured: false, expecting: requests)
        #expect(
            outcome.events == [
                .completed(cookie: 9, error: error, message: ""), .data(cookie: 10, offset: 0, bytes: [1, 2]),
                .completed(cookie: 10, error: nil, message: ""),
            ])
    }

    @Test func messagesAreCutToTheStringLimit() {
        let long = String(repeating: "x", count: NBDLimits.maxStringLength + 100)
        let bytes = ReplyEncoder.completion(cookie: 1, error: .ioError, message: long, command: .write, structured: true)
        let outcome = decodeReplies(bytes, structured: true, expecting: [RequestHeader(command: .write, cookie: 1, offset: 0, length: 512)])
        #expect(outcome.events == [.completed(cookie: 1, error: .ioError, message: String(long.prefix(NBDLimits.maxStringLength)))])
    }

    @Test(arguments: [false, true])
    func manyRepliesInAnyOrderRoundTrip(structured: Bool) {
        var generator = SeededGenerator(seed: 99)
        var requests: [RequestHeader] = []
        var replies: [[UInt8]] = []
        var expected: [UInt64: [ReplyEvent]] = [:]
        for cookie in UInt64(0)..<60 {
            let command = [Command.read, .read, .write, .flush, .trim].randomElement(using: &generator)!
            let length = UInt32.random(in: 1...2048, using: &generator)
            let failed = Int.random(in: 0..<4, using: &generator) == 0
            requests.append(RequestHeader(command: command, cookie: cookie, offset: UInt64(cookie) << 20, length: length))
            if command == .read, !failed {
                let data = Self.data(Int(length), seed: cookie)
                replies.append(Self.readReply(cookie: cookie, offset: UInt64(cookie) << 20, data: data, structured: structured))
                expected[cookie] = [.data(cookie: cookie, offset: 0, bytes: data), .completed(cookie: cookie, error: nil, message: "")]
            } else {
                let error: NBDErrorCode? = failed ? .ioError : nil
                replies.append(
                    ReplyEncoder.completion(cookie: cookie, error: error, message: "m\(cookie)", command: command, structured: structured))
                expected[cookie] = [.completed(cookie: cookie, error: error, message: structured && failed ? "m\(cookie)" : "")]
            }
        }
        let order = Array(0..<60).shuffled(using: &generator)
        let outcome = decodeReplies(order.flatMap { replies[$0] }, structured: structured, expecting: requests)
        #expect(outcome.error == nil)
        #expect(outcome.events == order.flatMap { expected[UInt64($0)]! })
    }
}
