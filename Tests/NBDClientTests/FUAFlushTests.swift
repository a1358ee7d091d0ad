import BlockDevice
import NBDClient
import NBDProtocol
import Synchronization
import Testing

/// FUA and the NBD_CMD_FLUSH that goes with it. A flush covers only writes
/// the server answered before it (doc/proto.md). Without NBD_FLAG_SEND_FUA,
/// a FUA write, trim or write-zeroes is the request and then the flush, so
/// the client must not send the flush until the request's reply has come: a
/// server that runs requests in parallel could flush before writing. With
/// FUA, a commit's durable log write sends the flush beside the writes.
@Suite("FUA and its FLUSH")
struct FUAFlushTests {
    static let export = ExportDescription(
        name: "", size: 1 << 20, flags: [.sendFlush, .sendTrim, .sendWriteZeroes],
        blockSize: BlockSizeConstraints(minimum: 1, preferred: 4096, maximum: NBDLimits.maxPayload))

    /// Per request the server saw, whether anything else arrived while it
    /// held that request's reply back for a while.
    struct Entry: Sendable, Equatable {
        var command: Command
        var fua: Bool
        var followedEarly: Bool
    }

    final class Log: Sendable {
        let entries = Mutex<[Entry]>([])
    }

    /// A server that holds each reply 150 ms, noting whether the client sent
    /// more meanwhile.
    func start(_ log: Log, export: ExportDescription = FUAFlushTests.export) throws -> ScriptedServer {
        try ScriptedServer(export: export) { session in
            while let request = session.nextRequest() {
                if request.header.command == .disconnect { return }
                let early = session.anotherRequestArrives(within: 0.15)
                log.entries.withLock {
                    $0.append(Entry(command: request.header.command, fua: request.header.flags.contains(.fua), followedEarly: early))
                }
                session.answer(request)
            }
        }
    }

    @Test(arguments: ["write", "trim", "zeroes"])
    func theFlushFollowsTheAnswer(_ operation: String) throws {
        let log = Log()
        let server = try start(log)
        defer { server.close() }
        let device = try RemoteBlockDevice(connectingTo: server.address, options: .forTests())
        switch operation {
        case "write":
            try device.write(at: 4096, bytes: [UInt8](repeating: 7, count: 4096), fua: true)
        case "trim": try device.trim(at: 0, length: 8192, fua: true)
        default: try device.writeZeroes(at: 0, length: 8192, flags: [.fua])
        }
        let entries = log.entries.withLock { $0 }
        #expect(entries.map(\.command) == [operation == "write" ? .write : operation == "trim" ? .trim : .writeZeroes, .flush])
        #expect(entries.first?.fua == false, "FUA sent to a server that did not advertise it")
        #expect(entries.first?.followedEarly == false, "NBD_CMD_FLUSH sent before the request it covers was answered")
    }

    /// What a server with `export` saw of `writeDurably` of two 4 KiB pieces.
    func durableWrites(export: ExportDescription) throws -> [Entry] {
        let log = Log()
        let server = try start(log, export: export)
        defer { server.close() }
        let device = try RemoteBlockDevice(connectingTo: server.address, options: .forTests())
        let data = [UInt8](repeating: 9, count: 8192)
        try data.withUnsafeBytes { buffer in
            try device.writeDurably([(0, UnsafeRawBufferPointer(rebasing: buffer[..<4096])), (65536, UnsafeRawBufferPointer(rebasing: buffer[4096...]))])
        }
        return log.entries.withLock { $0 }
    }

    /// A commit's log (`writeDurably`): without FUA, the writes, then the
    /// flush once they are answered.
    @Test func durableWritesWithoutFUAFlushAfterTheirAnswers() throws {
        let entries = try durableWrites(export: Self.export)
        #expect(entries.map(\.command) == [.write, .write, .flush])
        #expect(entries.allSatisfy { !$0.fua })
        #expect(entries[1].followedEarly == false, "NBD_CMD_FLUSH sent before the writes were answered")
    }

    /// With FUA, the writes carry it and the flush goes beside them: one
    /// round trip.
    @Test func durableWritesWithFUAGoInOneBatch() throws {
        let entries = try durableWrites(export: ScriptedServer.defaultExport)
        #expect(entries.map(\.command) == [.write, .write, .flush])
        #expect(entries.prefix(2).allSatisfy { $0.fua }, "the log blocks must be durable by themselves")
        #expect(entries[0].followedEarly, "the batch was sent one request at a time")
    }
}
