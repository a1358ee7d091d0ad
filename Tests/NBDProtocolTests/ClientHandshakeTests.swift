import NBDProtocol
import Testing

/// The client handshake against hand-crafted, often hostile, server bytes.
@Suite struct ClientHandshakeTests {
    let structured = ClientHandshake.Goal.export("disk", structuredReplies: true)
    let simple = ClientHandshake.Goal.export("disk", structuredReplies: false)
    /// The client's first message after a greeting offering NO_ZEROES.
    let opening = be(UInt32(3)) + Wire.option(.structuredReply)

    /// A well-formed successful answer to NBD_OPT_GO.
    func goAccepted(
        size: UInt64 = 1 << 30, flags: TransmissionFlags = [.hasFlags, .sendFlush],
        blockSize: BlockSizeConstraints = BlockSizeConstraints(minimum: 512, preferred: 4096, maximum: 1 << 25)
    ) -> [UInt8] {
        Wire.reply(.go, .info, Wire.infoExport(size: size, flags: flags))
            + Wire.reply(.go, .info, Wire.infoBlockSize(blockSize))
            + Wire.reply(.go, .ack)
    }

    func session(_ outcome: Decoded<ClientHandshakeEvent>) -> ClientSession? {
        guard case .ready(let session) = outcome.events.last else { return nil }
        return session
    }

    func failure(_ outcome: Decoded<ClientHandshakeEvent>) -> NBDProtocolError? {
        guard case .failed(let error) = outcome.events.last else { return nil }
        return error
    }

    // MARK: What the client sends

    @Test func opensWithFlagsAndStructuredReply() {
        #expect(runClient(structured, Wire.greeting()).events == [.send(opening)])
    }

    @Test func goRequestsBlockSize() {
        let outcome = runClient(simple, Wire.greeting())
        #expect(outcome.events == [.send(be(UInt32(3)) + Wire.go("disk", [.blockSize]))])
    }

    @Test func listOpensWithList() {
        #expect(runClient(.list, Wire.greeting()).events == [.send(be(UInt32(3)) + Wire.option(.list))])
    }

    @Test func noZeroesIsSentOnlyWhenOffered() {
        let outcome = runClient(.list, Wire.greeting(flags: 1))
        #expect(outcome.events == [.send(be(UInt32(1)) + Wire.option(.list))])
    }

    @Test func unknownHandshakeFlagsAreIgnored() {
        let outcome = runClient(.list, Wire.greeting(flags: 0x8001))
        #expect(outcome.events == [.send(be(UInt32(1)) + Wire.option(.list))])
    }

    // MARK: Greeting

    @Test func badPasswordMagicFails() {
        let outcome = runClient(structured, Array("NBDMAGIX".utf8) + Array("IHAVEOPT".utf8) + be(UInt16(3)))
        #expect(outcome.events == [.failed(.badGreetingMagic(0x4e42_444d_4147_4958))])
    }

    @Test func oldstyleServerFails() {
        // Oldstyle negotiation: NBDMAGIC then 0x00420281861253.
        let outcome = runClient(structured, Array("NBDMAGIC".utf8) + be(UInt64(0x0042_0281_8612_53)) + be(UInt16(0)))
        #expect(outcome.events == [.failed(.badGreetingMagic(0x0042_0281_8612_53))])
    }

    @Test(arguments: [UInt16(0), 2, 0x8002])
    func serverWithoutFixedNewstyleFails(flags: UInt16) {
        #expect(runClient(structured, Wire.greeting(flags: flags)).events == [.failed(.notFixedNewstyle)])
    }

    // MARK: Option reply framing

    @Test func badOptionReplyMagicFails() {
        let reply = be(UInt64(0x0003_e889_0455_65aa)) + be(OptionCode.structuredReply.rawValue) + be(UInt32(1)) + be(UInt32(0))
        let outcome = runClient(structured, Wire.greeting() + reply)
        #expect(outcome.events == [.send(opening), .failed(.badOptionReplyMagic(0x0003_e889_0455_65aa))])
    }

    @Test func replyToTheWrongOptionFails() {
        let outcome = runClient(structured, Wire.greeting() + Wire.reply(.go, .ack))
        #expect(outcome.events == [.send(opening), .failed(.unexpectedOptionReply(option: .go, expected: .structuredReply))])

        let later = runClient(structured, Wire.greeting() + Wire.reply(.structuredReply, .ack) + Wire.reply(.info, .ack))
        #expect(failure(later) == .unexpectedOptionReply(option: .info, expected: .go))
    }

    @Test(arguments: [UInt32(NBDLimits.maxOptionReplyLength + 1), .max])
    func replyLongerThanTheLimitFailsBeforeItsBody(length: UInt32) {
        // Only the header: the client must refuse without waiting for (or storing) the body.
        let header = be(UInt64(0x0003_e889_0455_65a9)) + be(OptionCode.go.rawValue) + be(OptionReplyType.info.rawValue) + be(length)
        let outcome = runClient(simple, Wire.greeting() + header)
        #expect(failure(outcome) == .optionReplyTooLong(length: length, limit: NBDLimits.maxOptionReplyLength))
    }

    @Test func replyOfExactlyTheLimitIsAwaited() {
        let header =
            be(UInt64(0x0003_e889_0455_65a9)) + be(OptionCode.go.rawValue) + be(OptionReplyType.info.rawValue)
            + be(UInt32(NBDLimits.maxOptionReplyLength))
        let outcome = runClient(simple, Wire.greeting() + header)
        #expect(outcome.events.count == 1)
    }

    // MARK: Refusals and fallbacks

    @Test(arguments: [
        OptionReplyType.errUnknown, .errPolicy, .errTLSRequired, .errBlockSizeRequired, .errShutdown, .errTooBig,
        OptionReplyType(rawValue: 1 << 31 | 99),
    ])
    func goRefusedFails(type: OptionReplyType) {
        let outcome = runClient(simple, Wire.greeting() + Wire.reply(.go, type, Array("no such export".utf8)))
        #expect(failure(outcome) == .optionRefused(.go, type, message: "no such export"))
    }

    @Test func refusalAfterSomeInfoFails() {
        let info = Wire.reply(.go, .info, Wire.infoExport(size: 4096, flags: .hasFlags))
        let outcome = runClient(simple, Wire.greeting() + info + Wire.reply(.go, .errShutdown))
        #expect(failure(outcome) == .optionRefused(.go, .errShutdown, message: ""))
    }

    @Test func structuredRepliesUnsupportedFallsBackToSimpleReplies() {
        let server = Wire.greeting() + Wire.reply(.structuredReply, .errUnsupported) + goAccepted()
        let outcome = runClient(structured, server)
        #expect(outcome.events.count == 3)
        #expect(outcome.events.dropFirst().first == .send(Wire.go("disk", [.blockSize])))
        #expect(session(outcome)?.structuredReplies == false)
        #expect(session(outcome)?.size == 1 << 30)
    }

    @Test func structuredRepliesRefusedOtherwiseFails() {
        let outcome = runClient(structured, Wire.greeting() + Wire.reply(.structuredReply, .errPolicy))
        #expect(failure(outcome) == .optionRefused(.structuredReply, .errPolicy, message: ""))
    }

    @Test func structuredReplyAckWithDataFails() {
        let outcome = runClient(structured, Wire.greeting() + Wire.reply(.structuredReply, .ack, [0]))
        guard case .malformedOptionReply(.structuredReply, .ack, _) = failure(outcome) else {
            Issue.record("expected a malformed reply, got \(outcome.events)")
            return
        }
    }

    @Test func acceptedStructuredRepliesAreInTheSession() {
        let server = Wire.greeting() + Wire.reply(.structuredReply, .ack) + goAccepted()
        let outcome = runClient(structured, server)
        #expect(outcome.events.dropFirst().first == .send(Wire.go("disk", [.blockSize])))
        #expect(session(outcome)?.structuredReplies == true)
    }

    // MARK: NBD_REP_INFO contents

    @Test func readyCarriesWhatTheServerSaidAndKeepsWhatFollows() {
        let sizes = BlockSizeConstraints(minimum: 1, preferred: 512, maximum: 512)
        let server =
            Wire.greeting() + Wire.reply(.go, .info, Wire.infoName("canonical"))
            + Wire.reply(.go, .info, Wire.infoDescription("text"))
            + Wire.reply(.go, .info, be(UInt16(99)) + [1, 2, 3])
            + goAccepted(size: 12345, flags: [.hasFlags, .readOnly], blockSize: sizes) + [7, 7, 7]
        let outcome = runClient(simple, server)
        let ready = session(outcome)
        #expect(ready?.exportName == "disk")
        #expect(ready?.size == 12345)
        #expect(ready?.flags == [.hasFlags, .readOnly])
        #expect(ready?.blockSize == sizes)
        #expect(ready?.structuredReplies == false)
        #expect(outcome.leftover == [7, 7, 7])
    }

    @Test func blockSizeIsOptional() {
        let server =
            Wire.greeting() + Wire.reply(.go, .info, Wire.infoExport(size: 4096, flags: .hasFlags)) + Wire.reply(.go, .ack)
        let ready = session(runClient(simple, server))
        #expect(ready?.size == 4096)
        #expect(ready?.blockSize == nil)
    }

    @Test(arguments: [0, 1, 11, 13, 20])
    func infoExportOfTheWrongLengthFails(length: Int) {
        let data = Array((be(UInt16(0)) + be(UInt64(4096)) + be(UInt16(1)) + [UInt8](repeating: 0, count: 20)).prefix(length))
        let outcome = runClient(simple, Wire.greeting() + Wire.reply(.go, .info, data) + Wire.reply(.go, .ack))
        guard case .malformedOptionReply(.go, .info, _) = failure(outcome) else {
            Issue.record("expected a malformed reply, got \(outcome.events)")
            return
        }
    }

    @Test(arguments: [TransmissionFlags(), [.readOnly], [.sendFlush, .sendFUA]])
    func transmissionFlagsWithoutHasFlagsFail(flags: TransmissionFlags) {
        let server = Wire.greeting() + Wire.reply(.go, .info, Wire.infoExport(size: 4096, flags: flags))
        #expect(failure(runClient(simple, server)) == .missingHasFlags(flags))
    }

    static let invalidSizes: [BlockSizeConstraints] = [
        BlockSizeConstraints(minimum: 0, preferred: 512, maximum: 1 << 20),  // zero minimum
        BlockSizeConstraints(minimum: 3, preferred: 512, maximum: 1 << 20),  // minimum not a power of 2
        BlockSizeConstraints(minimum: 1 << 17, preferred: 1 << 17, maximum: 1 << 20),  // minimum above 64 KiB
        BlockSizeConstraints(minimum: 1, preferred: 256, maximum: 1 << 20),  // preferred below 512
        BlockSizeConstraints(minimum: 512, preferred: 1000, maximum: 1 << 20),  // preferred not a power of 2
        BlockSizeConstraints(minimum: 4096, preferred: 2048, maximum: 1 << 20),  // preferred below minimum
        BlockSizeConstraints(minimum: 512, preferred: 4096, maximum: 2048),  // maximum below preferred
        BlockSizeConstraints(minimum: 512, preferred: 0, maximum: 0),
    ]

    @Test(arguments: invalidSizes)
    func invalidBlockSizeConstraintsFail(sizes: BlockSizeConstraints) {
        let server = Wire.greeting() + goAccepted(blockSize: sizes)
        #expect(failure(runClient(simple, server)) == .invalidBlockSize(sizes))
    }

    @Test(arguments: [
        BlockSizeConstraints(minimum: 1, preferred: 512, maximum: 512),
        BlockSizeConstraints(minimum: 65536, preferred: 65536, maximum: .max),
        BlockSizeConstraints(minimum: 512, preferred: 4096, maximum: 4096 + 1),
    ])
    func boundaryBlockSizeConstraintsAreAccepted(sizes: BlockSizeConstraints) {
        #expect(session(runClient(simple, Wire.greeting() + goAccepted(blockSize: sizes)))?.blockSize == sizes)
    }

    @Test(arguments: [13, 15])
    func blockSizeOfTheWrongLengthFails(length: Int) {
        let data = Array((Wire.infoBlockSize(BlockSizeConstraints(minimum: 1, preferred: 512, maximum: 512)) + [0]).prefix(length))
        let outcome = runClient(simple, Wire.greeting() + Wire.reply(.go, .info, data))
        guard case .malformedOptionReply(.go, .info, _) = failure(outcome) else {
            Issue.record("expected a malformed reply, got \(outcome.events)")
            return
        }
    }

    @Test func ackToGoWithoutInfoExportFails() {
        let sizes = Wire.reply(.go, .info, Wire.infoBlockSize(BlockSizeConstraints(minimum: 1, preferred: 512, maximum: 512)))
        #expect(failure(runClient(simple, Wire.greeting() + sizes + Wire.reply(.go, .ack))) == .missingExportInfo)
        #expect(failure(runClient(simple, Wire.greeting() + Wire.reply(.go, .ack))) == .missingExportInfo)
    }

    @Test(arguments: [OptionReplyType.server, .metaContext, OptionReplyType(rawValue: 77)])
    func unexpectedReplyTypeToGoFails(type: OptionReplyType) {
        let outcome = runClient(simple, Wire.greeting() + Wire.reply(.go, type, Wire.serverEntry("disk", "")))
        guard case .malformedOptionReply(.go, type, _) = failure(outcome) else {
            Issue.record("expected a malformed reply, got \(outcome.events)")
            return
        }
    }

    @Test func infoShorterThanItsTypeFails() {
        let outcome = runClient(simple, Wire.greeting() + Wire.reply(.go, .info, [0]))
        guard case .malformedOptionReply(.go, .info, _) = failure(outcome) else {
            Issue.record("expected a malformed reply, got \(outcome.events)")
            return
        }
    }

    // MARK: NBD_OPT_LIST

    @Test func listCollectsEntriesUntilAck() {
        let server =
            Wire.greeting() + Wire.reply(.list, .server, Wire.serverEntry("a", "first"))
            + Wire.reply(.list, .server, Wire.serverEntry("", "")) + Wire.reply(.list, .server, Wire.serverEntry("b", ""))
            + Wire.reply(.list, .ack)
        let outcome = runClient(.list, server)
        guard case .listed(let exports) = outcome.events.last else {
            Issue.record("expected a list, got \(outcome.events)")
            return
        }
        #expect(exports.map(\.name) == ["a", "", "b"])
        #expect(exports.map(\.description) == ["first", "", ""])
    }

    @Test(arguments: [[UInt8](), [0, 0, 0], be(UInt32(5)) + Array("four".utf8), be(UInt32.max)])
    func malformedListEntryFails(data: [UInt8]) {
        let outcome = runClient(.list, Wire.greeting() + Wire.reply(.list, .server, data))
        guard case .malformedOptionReply(.list, .server, _) = failure(outcome) else {
            Issue.record("expected a malformed reply, got \(outcome.events)")
            return
        }
    }

    @Test func listLongerThanTheLimitFails() {
        // A server that never ends its list must not grow the client without bound.
        let entry = Wire.reply(.list, .server, Wire.serverEntry("export", "described"))
        let entries = [[UInt8]](repeating: entry, count: NBDLimits.maxListedExports).flatMap { $0 }
        let full = runClient(.list, Wire.greeting() + entries + Wire.reply(.list, .ack))
        guard case .listed(let exports) = full.events.last else {
            Issue.record("expected a list, got \(full.events.last.map { "\($0)" } ?? "nothing")")
            return
        }
        #expect(exports.count == NBDLimits.maxListedExports)

        let endless = runClient(.list, Wire.greeting() + entries + entry)
        guard case .malformedOptionReply(.list, .server, _) = failure(endless) else {
            Issue.record("expected a failure, got \(endless.events.last.map { "\($0)" } ?? "nothing")")
            return
        }
    }

    @Test func listRefusedFails() {
        let outcome = runClient(.list, Wire.greeting() + Wire.reply(.list, .errPolicy, Array("no".utf8)))
        #expect(failure(outcome) == .optionRefused(.list, .errPolicy, message: "no"))
    }
}
