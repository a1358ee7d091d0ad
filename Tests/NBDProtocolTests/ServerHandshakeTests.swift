import NBDProtocol
import Testing

@Suite struct ServerHandshakeTests {
    let catalog = Fixtures.catalog
    /// NBD_FLAG_C_FIXED_NEWSTYLE.
    let fixed = be(UInt32(1))
    /// NBD_FLAG_C_FIXED_NEWSTYLE | NBD_FLAG_C_NO_ZEROES.
    let fixedNoZeroes = be(UInt32(3))

    /// What the server answers to a successful NBD_OPT_INFO/GO with no
    /// information requests: NBD_INFO_EXPORT, NBD_INFO_BLOCK_SIZE, NBD_REP_ACK.
    func infoReplies(_ option: OptionCode, _ export: ExportDescription) -> [UInt8] {
        Wire.reply(option, .info, Wire.infoExport(size: export.size, flags: Fixtures.wireFlags(export)))
            + Wire.reply(option, .info, Wire.infoBlockSize(export.blockSize))
            + Wire.reply(option, .ack)
    }

    func session(_ export: ExportDescription, structured: Bool = false) -> ServerHandshakeEvent {
        .transmission(NegotiatedSession(export: export, structuredReplies: structured))
    }

    // MARK: Greeting and client flags

    @Test func greetingIsNBDMAGICThenIHAVEOPTThenFixedNewstyleAndNoZeroes() {
        let greeting = ServerHandshake(catalog: catalog).greeting()
        #expect(
            greeting == [
                0x4e, 0x42, 0x44, 0x4d, 0x41, 0x47, 0x49, 0x43,  // NBDMAGIC
                0x49, 0x48, 0x41, 0x56, 0x45, 0x4f, 0x50, 0x54,  // IHAVEOPT
                0x00, 0x03,  // NBD_FLAG_FIXED_NEWSTYLE | NBD_FLAG_NO_ZEROES
            ])
    }

    @Test(arguments: [UInt32(1 << 2), 0b111, 1 << 31, .max])
    func unknownClientFlagsClose(flags: UInt32) {
        let outcome = runServer(catalog, be(flags) + Wire.option(.list))
        #expect(outcome.events == [.close(.unknownClientFlags(flags))])
    }

    @Test(arguments: [UInt32(0), 2])
    func clientWithoutFixedNewstyleIsClosed(flags: UInt32) {
        let outcome = runServer(catalog, be(flags) + Wire.option(.list))
        #expect(outcome.events == [.close(.notFixedNewstyle)])
    }

    @Test func nothingHappensUntilTheClientFlagsAreComplete() {
        var handshake = ServerHandshake(catalog: catalog)
        #expect(handshake.receive([0, 0, 0]).isEmpty)
        #expect(handshake.receive([1] + Wire.option(.list)).count == 1)
    }

    // MARK: NBD_OPT_LIST

    @Test func listNamesEveryExportThenAcks() {
        let outcome = runServer(catalog, fixed + Wire.option(.list) + Wire.option(.list))
        let list =
            Wire.reply(.list, .server, Wire.serverEntry("disk", "main disk"))
            + Wire.reply(.list, .server, Wire.serverEntry("archive", ""))
            + Wire.reply(.list, .ack)
        #expect(outcome.events == [.send(list), .send(list)])
    }

    @Test func listOfAnEmptyCatalogIsJustAck() {
        let outcome = runServer(ExportCatalog(exports: []), fixed + Wire.option(.list))
        #expect(outcome.events == [.send(Wire.reply(.list, .ack))])
    }

    @Test func listWithDataIsInvalidAndHaggleContinues() {
        let outcome = runServer(catalog, fixed + Wire.option(.list, [1, 2, 3]) + Wire.option(.list))
        #expect(outcome.events.count == 2)
        let replies = parseOptionReplies(sent(outcome.events))
        #expect(replies.map(\.option) == [.list, .list, .list, .list])
        #expect(replies.map(\.type) == [.errInvalid, .server, .server, .ack])
    }

    // MARK: NBD_OPT_STRUCTURED_REPLY

    @Test func structuredReplyIsAcknowledgedAndCarriedIntoTheSession() {
        let outcome = runServer(catalog, fixed + Wire.option(.structuredReply) + Wire.go("disk"))
        #expect(
            outcome.events == [
                .send(Wire.reply(.structuredReply, .ack)), .send(infoReplies(.go, Fixtures.disk)),
                session(Fixtures.disk, structured: true),
            ])
    }

    @Test func structuredReplyWithDataIsInvalidAndNotNegotiated() {
        let outcome = runServer(catalog, fixed + Wire.option(.structuredReply, [0]) + Wire.go("disk"))
        #expect(outcome.events.count == 3)
        #expect(parseOptionReplies(sent(outcome.events)).first?.type == .errInvalid)
        #expect(outcome.events.last == session(Fixtures.disk, structured: false))
    }

    @Test func structuredReplyNotOfferedIsUnsupportedAndGoStillServesSimpleReplies() {
        let outcome = runServer(
            catalog, fixed + Wire.option(.structuredReply) + Wire.go("disk"), offersStructuredReplies: false)
        #expect(outcome.events.count == 3)
        let replies = parseOptionReplies(sent(outcome.events))
        #expect(replies.first?.option == .structuredReply)
        #expect(replies.first?.type == .errUnsupported)
        #expect(outcome.events.last == session(Fixtures.disk, structured: false))
    }

    // MARK: NBD_OPT_INFO

    @Test func infoDescribesAKnownExportAndHaggleContinues() {
        let input =
            fixed + Wire.info("disk", [.name, .description, .blockSize]) + Wire.info("archive")
            + Wire.go("archive")
        let outcome = runServer(catalog, input)
        let disk = Fixtures.disk
        let described =
            Wire.reply(.info, .info, Wire.infoExport(size: 1 << 30, flags: Fixtures.wireFlags(disk)))
            + Wire.reply(.info, .info, Wire.infoName("disk"))
            + Wire.reply(.info, .info, Wire.infoDescription("main disk"))
            + Wire.reply(.info, .info, Wire.infoBlockSize(disk.blockSize))
            + Wire.reply(.info, .ack)
        #expect(
            outcome.events == [
                .send(described), .send(infoReplies(.info, Fixtures.archive)),
                .send(infoReplies(.go, Fixtures.archive)), session(Fixtures.archive),
            ])
    }

    @Test func infoExportCarriesSizeAndFlagsWithHasFlags() {
        let outcome = runServer(catalog, fixed + Wire.info("archive"))
        let first = parseOptionReplies(sent(outcome.events)).first
        // NBD_INFO_EXPORT, size 1 MiB, HAS_FLAGS | READ_ONLY | SEND_FLUSH.
        #expect(first?.data == [0, 0, /* size */ 0, 0, 0, 0, 0, 0x10, 0, 0, /* flags */ 0, 0b111])
    }

    @Test func emptyDescriptionIsNotSentEvenWhenAsked() {
        let outcome = runServer(catalog, fixed + Wire.info("archive", [.description]))
        #expect(outcome.events == [.send(infoReplies(.info, Fixtures.archive))])
    }

    @Test(arguments: [OptionCode.info, .go])
    func unknownExportIsErrUnknownAndHaggleContinues(option: OptionCode) {
        let input = fixed + Wire.option(option, Wire.infoData(name: Array("nope".utf8))) + Wire.go("disk")
        let outcome = runServer(catalog, input)
        #expect(outcome.events.count == 3)
        let replies = parseOptionReplies(sent(outcome.events))
        #expect(replies.first?.option == option)
        #expect(replies.first?.type == .errUnknown)
        #expect(outcome.events.last == session(Fixtures.disk))
    }

    @Test func dfIsNeverAdvertised() {
        var export = Fixtures.disk
        export.flags.insert(.sendDF)
        let outcome = runServer(ExportCatalog(exports: [export]), fixed + Wire.info("disk"))
        let info = parseOptionReplies(sent(outcome.events)).first?.data ?? []
        #expect(info == Wire.infoExport(size: export.size, flags: Fixtures.wireFlags(Fixtures.disk)))
    }

    // MARK: NBD_OPT_GO

    @Test func goEntersTransmissionAndKeepsTheBytesThatFollow() throws {
        let requests =
            Wire.request(.read, cookie: 7, offset: 4096, length: 4096)
            + Wire.request(.write, cookie: 8, offset: 0, length: 4) + [1, 2, 3, 4]
        let outcome = runServer(catalog, fixed + Wire.go("archive", [.blockSize]) + requests)
        #expect(outcome.events == [.send(infoReplies(.go, Fixtures.archive)), session(Fixtures.archive)])
        #expect(outcome.leftover == requests)

        guard case .transmission(let negotiated) = outcome.events.last else { return }
        #expect(negotiated.flags == [.hasFlags, .readOnly, .sendFlush])
        #expect(!negotiated.structuredReplies)

        var decoder = RequestDecoder()
        decoder.receive(outcome.leftover)
        #expect(try decoder.next()?.header == RequestHeader(command: .read, cookie: 7, offset: 4096, length: 4096))
        #expect(try decoder.next().map { Array($0.payload) } == [1, 2, 3, 4])
    }

    @Test func noInputIsTakenAfterTransmissionStarts() {
        var handshake = ServerHandshake(catalog: catalog)
        let events = handshake.receive(fixed + Wire.go("disk"))
        #expect(events.last == session(Fixtures.disk))
        #expect(handshake.receive(Wire.option(.list)).isEmpty)
    }

    @Test func goAfterInfoGivesTheSameInformation() {
        let outcome = runServer(catalog, fixed + Wire.info("disk", [.name]) + Wire.go("disk", [.name]))
        let replies = parseOptionReplies(sent(outcome.events))
        let info = replies.filter { $0.option == .info }.map { [$0.type.rawValue: $0.data] }
        let go = replies.filter { $0.option == .go }.map { [$0.type.rawValue: $0.data] }
        #expect(info.count == 4)
        #expect(info == go)
    }

    // MARK: NBD_OPT_EXPORT_NAME

    @Test func exportNameWithoutNoZeroesPadsWith124Zeroes() {
        let tail = Wire.request(.flush, cookie: 1)
        let outcome = runServer(catalog, fixed + Wire.option(.exportName, Array("disk".utf8)) + tail)
        let reply = be(UInt64(1 << 30)) + be(Fixtures.wireFlags(Fixtures.disk).rawValue) + [UInt8](repeating: 0, count: 124)
        #expect(outcome.events == [.send(reply), session(Fixtures.disk)])
        #expect(outcome.leftover == tail)
    }

    @Test func exportNameWithNoZeroesSendsSizeAndFlagsOnly() {
        let tail = Wire.request(.disconnect, cookie: 2)
        let outcome = runServer(
            catalog, fixedNoZeroes + Wire.option(.structuredReply) + Wire.option(.exportName, Array("archive".utf8)) + tail)
        let reply = be(UInt64(1 << 20)) + be(Fixtures.wireFlags(Fixtures.archive).rawValue)
        #expect(
            outcome.events == [
                .send(Wire.reply(.structuredReply, .ack)), .send(reply), session(Fixtures.archive, structured: true),
            ])
        #expect(outcome.leftover == tail)
    }

    @Test func exportNameOfAnUnknownExportClosesWithoutReply() {
        let outcome = runServer(catalog, fixed + Wire.option(.exportName, Array("nope".utf8)))
        #expect(outcome.events == [.close(.unknownExport("nope"))])
    }

    @Test func exportNameThatIsNotUTF8Closes() {
        let outcome = runServer(catalog, fixed + Wire.option(.exportName, [0x64, 0xff, 0xfe]))
        #expect(outcome.events.count == 1)
        guard case .close(.unknownExport) = outcome.events.first else {
            Issue.record("expected close, got \(outcome.events)")
            return
        }
    }

    // MARK: Empty name and the default export

    @Test func emptyNameSelectsTheDefaultExport() {
        let outcome = runServer(catalog, fixed + Wire.info("", [.name]) + Wire.go(""))
        let canonical =
            Wire.reply(.info, .info, Wire.infoExport(size: 1 << 30, flags: Fixtures.wireFlags(Fixtures.disk)))
            + Wire.reply(.info, .info, Wire.infoName("disk"))
            + Wire.reply(.info, .info, Wire.infoBlockSize(Fixtures.disk.blockSize))
            + Wire.reply(.info, .ack)
        #expect(outcome.events == [.send(canonical), .send(infoReplies(.go, Fixtures.disk)), session(Fixtures.disk)])

        let byExportName = runServer(catalog, fixedNoZeroes + Wire.option(.exportName))
        #expect(byExportName.events.last == session(Fixtures.disk))
    }

    @Test func emptyNameWithoutADefaultIsUnknown() {
        let noDefault = ExportCatalog(exports: [Fixtures.disk, Fixtures.archive])
        let outcome = runServer(noDefault, fixed + Wire.go("") + Wire.option(.exportName))
        #expect(parseOptionReplies(sent(outcome.events)).map(\.type) == [.errUnknown])
        #expect(outcome.events.last == .close(.unknownExport("")))
    }

    // MARK: NBD_OPT_ABORT

    @Test(arguments: [[UInt8](), [9, 9, 9]])
    func abortIsAcknowledgedThenCloses(data: [UInt8]) {
        let outcome = runServer(catalog, fixed + Wire.option(.abort, data) + Wire.option(.list))
        #expect(outcome.events == [.send(Wire.reply(.abort, .ack)), .close(.clientAborted)])
        #expect(outcome.leftover == Wire.option(.list))
    }

    // MARK: Unknown and malformed options

    @Test(arguments: [
        OptionCode.startTLS, .listMetaContext, .setMetaContext, .extendedHeaders, OptionCode(rawValue: 4),
        OptionCode(rawValue: 0xdead_beef),
    ])
    func unknownOptionIsUnsupportedAndHaggleContinues(option: OptionCode) {
        let outcome = runServer(catalog, fixed + Wire.option(option, [1, 2, 3]) + Wire.go("disk"))
        #expect(outcome.events.count == 3)
        let first = parseOptionReplies(sent(outcome.events)).first
        #expect(first?.option == option)
        #expect(first?.type == .errUnsupported)
        #expect(outcome.events.last == session(Fixtures.disk))
    }

    @Test func badOptionMagicCloses() {
        let bad = Array("IHAVEOPX".utf8) + be(OptionCode.list.rawValue) + be(UInt32(0))
        let outcome = runServer(catalog, fixed + Wire.option(.list) + bad)
        #expect(outcome.events.count == 2)
        #expect(outcome.events.last == .close(.badOptionMagic(0x4948_4156_454F_5058)))
    }

    /// 1 MiB of option data, made of what would parse as NBD_OPT_ABORT
    /// options, so parsing instead of skipping would show.
    static let megabyteOfAborts = [[UInt8]](repeating: Wire.option(.abort), count: (1 << 20) / 16).flatMap { $0 }

    @Test func oversizedOptionIsSkippedAndAnsweredTooBigThenTheNextOptionWorks() {
        let header = Array("IHAVEOPT".utf8) + be(OptionCode.go.rawValue) + be(UInt32(1 << 20))
        let outcome = runServer(catalog, fixed + header + Self.megabyteOfAborts + Wire.go("disk"))
        #expect(outcome.events.count == 3)
        let first = parseOptionReplies(sent(Array(outcome.events.prefix(1))))
        #expect(first.map(\.option) == [.go])
        #expect(first.map(\.type) == [.errTooBig])
        #expect(outcome.events.dropFirst().first == .send(infoReplies(.go, Fixtures.disk)))
        #expect(outcome.events.last == session(Fixtures.disk))
    }

    @Test func oversizedOptionIsNeverBuffered() {
        var handshake = ServerHandshake(catalog: catalog)
        let header = Array("IHAVEOPT".utf8) + be(OptionCode.info.rawValue) + be(UInt32(1 << 20))
        #expect(handshake.receive(fixed + header).isEmpty)
        let pieces = stride(from: 0, to: 1 << 20, by: 65536).map { Self.megabyteOfAborts[$0..<($0 + 65536)] }
        for piece in pieces.dropLast() {
            #expect(handshake.receive(piece).isEmpty)
            // A copy shows what the handshake holds without disturbing it.
            var probe = handshake
            #expect(probe.takeLeftover().isEmpty)
        }
        let events = handshake.receive(pieces.last!)
        #expect(parseOptionReplies(sent(events)).map(\.type) == [.errTooBig])
    }

    @Test func oversizedExportNameClosesWithoutAnOptionReply() {
        // NBD_OPT_EXPORT_NAME cannot be answered with an option reply (the
        // client would read it as the export size); the server must close.
        let length = NBDLimits.maxOptionLength + 1
        let header = Array("IHAVEOPT".utf8) + be(OptionCode.exportName.rawValue) + be(UInt32(length))
        let outcome = runServer(catalog, fixed + header + [UInt8](repeating: 0x61, count: length))
        #expect(outcome.events.count == 1)
        guard case .close(.unknownExport) = outcome.events.first else {
            Issue.record("expected close, got \(outcome.events)")
            return
        }
        // It closes on the header, without reading the name.
        var handshake = ServerHandshake(catalog: catalog)
        #expect(handshake.receive(fixed + header) == outcome.events)
    }

    @Test func oversizedAbortIsStillAcknowledged() {
        // "The server MUST reply with NBD_REP_ACK" and "SHOULD ignore any data".
        let header = Array("IHAVEOPT".utf8) + be(OptionCode.abort.rawValue) + be(UInt32(1 << 20))
        let outcome = runServer(catalog, fixed + header)
        #expect(outcome.events == [.send(Wire.reply(.abort, .ack)), .close(.clientAborted)])
    }

    @Test func optionOfExactlyTheLimitIsRead() {
        let data = [UInt8](repeating: 0x41, count: NBDLimits.maxOptionLength)
        let atLimit = runServer(catalog, fixed + Wire.option(raw: 0x1234, data))
        #expect(parseOptionReplies(sent(atLimit.events)).map(\.type) == [.errUnsupported])
        let overLimit = runServer(catalog, fixed + Wire.option(raw: 0x1234, data + [0x41]))
        #expect(parseOptionReplies(sent(overLimit.events)).map(\.type) == [.errTooBig])
    }

    @Test func moreThanMaxOptionsCloses() {
        let options = [[UInt8]](repeating: Wire.option(raw: 0x1000), count: NBDLimits.maxOptions).flatMap { $0 }
        let outcome = runServer(catalog, fixed + options + Wire.go("disk"))
        #expect(outcome.events.count == NBDLimits.maxOptions + 1)
        #expect(outcome.events.last == .close(.tooManyOptions(limit: NBDLimits.maxOptions)))

        // The limit itself is allowed: the last option may still be GO.
        let allowed = [[UInt8]](repeating: Wire.option(raw: 0x1000), count: NBDLimits.maxOptions - 1).flatMap { $0 }
        #expect(runServer(catalog, fixed + allowed + Wire.go("disk")).events.last == session(Fixtures.disk))
    }

    @Test func oversizedOptionsCountTowardsTheLimit() {
        let oversized = Array("IHAVEOPT".utf8) + be(UInt32(0x1000)) + be(UInt32(NBDLimits.maxOptionLength + 1))
            + [UInt8](repeating: 0, count: NBDLimits.maxOptionLength + 1)
        let options = [[UInt8]](repeating: oversized, count: NBDLimits.maxOptions).flatMap { $0 }
        var handshake = ServerHandshake(catalog: catalog)
        let events = handshake.receive(fixed + options + Wire.option(raw: 0x1000))
        #expect(events.count == NBDLimits.maxOptions + 1)
        #expect(events.last == .close(.tooManyOptions(limit: NBDLimits.maxOptions)))
    }

    struct Malformed: Sendable, CustomTestStringConvertible {
        var testDescription: String
        var data: [UInt8]
    }

    static let malformedInfo: [Malformed] = [
        Malformed(testDescription: "no data", data: []),
        Malformed(testDescription: "five bytes", data: [0, 0, 0, 0, 0]),
        Malformed(testDescription: "name length past the data", data: be(UInt32(100)) + Array("disk".utf8) + be(UInt16(0))),
        Malformed(testDescription: "name length 2^32-1", data: be(UInt32.max) + be(UInt16(0))),
        Malformed(testDescription: "name eats the count", data: be(UInt32(6)) + Array("disk".utf8) + be(UInt16(0))),
        Malformed(
            testDescription: "count above the requests",
            data: be(UInt32(4)) + Array("disk".utf8) + be(UInt16(2)) + be(UInt16(1))),
        Malformed(
            testDescription: "count below the requests",
            data: be(UInt32(4)) + Array("disk".utf8) + be(UInt16(0)) + be(UInt16(1))),
        Malformed(testDescription: "odd trailing byte", data: Wire.infoData(name: Array("disk".utf8)) + [0]),
        Malformed(testDescription: "name not UTF-8", data: Wire.infoData(name: [0x64, 0xc3, 0x28])),
        Malformed(
            testDescription: "name over NBD_MAX_STRING",
            data: Wire.infoData(name: [UInt8](repeating: 0x61, count: NBDLimits.maxStringLength + 1))),
        Malformed(
            testDescription: "more info requests than the limit",
            data: Wire.infoData(
                name: Array("disk".utf8),
                requests: [InfoType](repeating: .name, count: NBDLimits.maxInfoRequests + 1))),
    ]

    @Test(arguments: malformedInfo, [OptionCode.info, .go])
    func malformedInfoOrGoIsInvalidAndHaggleContinues(malformed: Malformed, option: OptionCode) {
        let outcome = runServer(catalog, fixed + Wire.option(option, malformed.data) + Wire.go("disk"))
        #expect(outcome.events.count == 3)
        let first = parseOptionReplies(sent(Array(outcome.events.prefix(1))))
        #expect(first.map(\.option) == [option])
        #expect(first.map(\.type) == [.errInvalid])
        #expect(outcome.events.last == session(Fixtures.disk))
    }
}
