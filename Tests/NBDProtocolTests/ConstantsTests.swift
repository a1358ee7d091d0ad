import NBDProtocol
import Testing

/// The wire constants against the numbers in proto.md, since the other tests
/// name them through NBDProtocol's own definitions.
@Suite struct ConstantsTests {
    @Test func magics() {
        #expect(NBDMagic.initPassword == 0x4e42_444d_4147_4943)
        #expect(NBDMagic.option == 0x4948_4156_454F_5054)
        #expect(NBDMagic.optionReply == 0x3_e889_0455_65a9)
        #expect(NBDMagic.request == 0x2560_9513)
        #expect(NBDMagic.simpleReply == 0x6744_6698)
        #expect(NBDMagic.structuredReply == 0x668e_33ef)
    }

    @Test func handshakeValues() {
        #expect(HandshakeFlags.fixedNewstyle.rawValue == 1 && HandshakeFlags.noZeroes.rawValue == 2)
        #expect(ClientFlags.fixedNewstyle.rawValue == 1 && ClientFlags.noZeroes.rawValue == 2)
        let options: [OptionCode] = [.exportName, .abort, .list, .startTLS, .info, .go, .structuredReply, .listMetaContext, .setMetaContext]
        #expect(options.map(\.rawValue) == [1, 2, 3, 5, 6, 7, 8, 9, 10])
        let replies: [OptionReplyType] = [.ack, .server, .info, .metaContext]
        #expect(replies.map(\.rawValue) == [1, 2, 3, 4])
        let errors: [OptionReplyType] = [
            .errUnsupported, .errPolicy, .errInvalid, .errPlatform, .errTLSRequired, .errUnknown, .errShutdown,
            .errBlockSizeRequired, .errTooBig,
        ]
        #expect(errors.map(\.rawValue) == (1...9).map { 1 << 31 + $0 })
        #expect(errors.allSatisfy(\.isError) && !replies.contains(where: \.isError))
        let infos: [InfoType] = [.export, .name, .description, .blockSize]
        #expect(infos.map(\.rawValue) == [0, 1, 2, 3])
    }

    @Test func transmissionValues() {
        let flags: [TransmissionFlags] = [
            .hasFlags, .readOnly, .sendFlush, .sendFUA, .rotational, .sendTrim, .sendWriteZeroes, .sendDF, .canMultiConn,
            .sendResize, .sendCache, .sendFastZero,
        ]
        #expect(flags.map(\.rawValue) == (0..<12).map { 1 << $0 })
        let commands: [Command] = [.read, .write, .disconnect, .flush, .trim, .cache, .writeZeroes, .blockStatus, .resize]
        #expect(commands.map(\.rawValue) == Array(0...8))
        let commandFlags: [CommandFlags] = [.fua, .noHole, .dontFragment, .requestOne, .fastZero, .payloadLength]
        #expect(commandFlags.map(\.rawValue) == (0..<6).map { 1 << $0 })
        #expect(ReplyFlags.done.rawValue == 1)
        let chunks: [StructuredReplyType] = [.none, .offsetData, .offsetHole, .blockStatus, .error, .errorOffset]
        #expect(chunks.map(\.rawValue) == [0, 1, 2, 5, 32769, 32770])
        let errors: [NBDErrorCode] = [.permissionDenied, .ioError, .outOfMemory, .invalid, .noSpace, .overflow, .notSupported, .shutdown]
        #expect(errors.map(\.rawValue) == [1, 5, 12, 22, 28, 75, 95, 108])
    }

    @Test func messageSizes() {
        #expect(NBDMessageSize.serverGreeting == 18)
        #expect(NBDMessageSize.optionHeader == 16)
        #expect(NBDMessageSize.optionReplyHeader == 20)
        #expect(NBDMessageSize.request == 28)
        #expect(NBDMessageSize.simpleReply == 16)
        #expect(NBDMessageSize.structuredReplyHeader == 20)
        #expect(NBDMessageSize.exportNameReplyZeroes == 124)
    }
}
