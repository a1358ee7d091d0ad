import BlockDevice
import Glibc
import NBDProtocol
import NBDServer
import Sockets
import Testing

/// Bad handshakes end only their own connection.
@Suite("Handshake")
struct HandshakeTests {
    /// Connects, reads the greeting, sends `bytes`; returns the client.
    func sendAfterGreeting(_ fixture: TestServer, _ bytes: [UInt8]) throws -> RawClient {
        let client = try RawClient(connectingTo: fixture.address)
        let greeting = try client.receiveExactly(18)
        #expect(Array(greeting[8..<16]) == Array("IHAVEOPT".utf8))
        try client.send(bytes)
        return client
    }

    func clientFlags() -> [UInt8] {
        var bytes: [UInt8] = []
        bytes.appendBigEndian(ClientFlags([.fixedNewstyle, .noZeroes]).rawValue)
        return bytes
    }

    func option(_ code: OptionCode, _ data: [UInt8], magic: UInt64 = NBDMagic.option) -> [UInt8] {
        var bytes: [UInt8] = []
        bytes.appendBigEndian(magic)
        bytes.appendBigEndian(code.rawValue)
        bytes.appendBigEndian(UInt32(data.count))
        return bytes + data
    }

    /// The server still serves a well-behaved client.
    func expectStillServing(_ fixture: TestServer) throws {
        let client = try RawClient(fixture.address, export: "mem")
        #expect(try client.read(at: 0, length: 4096).count == 4096)
    }

    @Test func badOptionMagicCloses() throws {
        let fixture = try TestServer()
        let bystander = try RawClient(fixture.address, export: "mem")
        let client = try sendAfterGreeting(fixture, clientFlags() + option(.go, [], magic: 0x1122_3344_5566_7788))
        #expect(client.isClosedByServer())
        #expect(try bystander.read(at: 0, length: 512).count == 512)
        try expectStillServing(fixture)
    }

    @Test func garbageCloses() throws {
        let fixture = try TestServer()
        var generator = SystemRandomNumberGenerator()
        for _ in 0..<4 {
            let garbage = (0..<200).map { _ in UInt8.random(in: 0...255, using: &generator) }
            let client = try sendAfterGreeting(fixture, garbage)
            #expect(client.isClosedByServer())
        }
        // Unknown client flags.
        var flags: [UInt8] = []
        flags.appendBigEndian(UInt32(0x8000_0001))
        #expect(try sendAfterGreeting(fixture, flags).isClosedByServer())
        try expectStillServing(fixture)
    }

    @Test func unknownExportOnGoIsErrUnknown() throws {
        let fixture = try TestServer()
        let client = try RawClient(connectingTo: fixture.address)
        let event = try client.negotiate(.export("nope", structuredReplies: true))
        guard case .failed(.optionRefused(let option, let type, let message)) = event else {
            Issue.record("expected a refusal, got \(event)")
            return
        }
        #expect(option == .go)
        #expect(type == .errUnknown)
        #expect(message.contains("nope"))
        try expectStillServing(fixture)
    }

    @Test func unknownExportNameCloses() throws {
        let fixture = try TestServer()
        let client = try sendAfterGreeting(fixture, clientFlags() + option(.exportName, Array("nope".utf8)))
        #expect(client.isClosedByServer())
        try expectStillServing(fixture)
    }

    @Test func emptyNameWithoutDefaultIsUnknown() throws {
        let fixture = try TestServer(exports: [NBDExport(name: "mem", device: try MemoryBlockDevice(size: 4096))])
        let client = try RawClient(connectingTo: fixture.address)
        let event = try client.negotiate(.export("", structuredReplies: false))
        guard case .failed(.optionRefused(.go, .errUnknown, _)) = event else {
            Issue.record("expected NBD_REP_ERR_UNKNOWN, got \(event)")
            return
        }
    }

    @Test func oversizedOptionIsRefusedAndTheHandshakeGoesOn() throws {
        let fixture = try TestServer()
        let client = try sendAfterGreeting(fixture, clientFlags() + option(.go, [UInt8](repeating: 0, count: 100_000)))
        let reply = try client.receiveExactly(20)
        #expect(Array(reply[12..<16]) == [0x80, 0, 0, 9])  // NBD_REP_ERR_TOO_BIG
        let length = Int(reply[16]) << 24 | Int(reply[17]) << 16 | Int(reply[18]) << 8 | Int(reply[19])
        _ = try client.receiveExactly(length)
        // Abort politely: the server acknowledges and closes.
        try client.send(option(.abort, []))
        #expect(client.isClosedByServer())
    }

    @Test func silentClientIsDroppedAfterTheHandshakeTimeout() throws {
        let configuration = NBDServerConfiguration(handshakeTimeout: 1)
        let fixture = try TestServer(
            exports: [NBDExport(name: "mem", device: try MemoryBlockDevice(size: 4096))], configuration: configuration)
        let silent = try RawClient(connectingTo: fixture.address)
        _ = try silent.receiveExactly(18)
        // A client dribbling one byte at a time is held to the same deadline.
        let dribbler = try RawClient(connectingTo: fixture.address)
        _ = try dribbler.receiveExactly(18)
        let start = monotonic()
        for byte in clientFlags() {
            try? dribbler.send([byte])
            usleep(200_000)
        }
        #expect(silent.isClosedByServer())
        #expect(dribbler.isClosedByServer())
        #expect(monotonic() - start < 5)
        #expect(waitUntil { fixture.server.connectionCount == 0 })
        let client = try RawClient(fixture.address, export: "mem")
        #expect(try client.read(at: 0, length: 4096).count == 4096)
    }

    @Test func connectionsBeyondTheLimitAreClosed() throws {
        let configuration = NBDServerConfiguration(maxConnections: 3)
        let fixture = try TestServer(
            exports: [NBDExport(name: "mem", device: try MemoryBlockDevice(size: 4096))], configuration: configuration)
        let held = try (0..<3).map { _ in try RawClient(fixture.address, export: "mem") }
        #expect(waitUntil { fixture.server.connectionCount == 3 })
        let excess = try RawClient(connectingTo: fixture.address)
        #expect(excess.isClosedByServer())
        for client in held { #expect(try client.read(at: 0, length: 16).count == 16) }
        try held[0].send(held[0].encode(.disconnect).bytes)
        #expect(held[0].isClosedByServer())
        #expect(waitUntil { fixture.server.connectionCount == 2 })
        let late = try RawClient(fixture.address, export: "mem")
        #expect(try late.read(at: 0, length: 16).count == 16)
    }

    @Test func serverRejectsBadExportSets() throws {
        let device = try MemoryBlockDevice(size: 4096)
        #expect(throws: NBDServerError.duplicateExport("a")) {
            try NBDServer(exports: [NBDExport(name: "a", device: device), NBDExport(name: "a", device: device)])
        }
        #expect(throws: NBDServerError.noExports) { try NBDServer(exports: []) }
        #expect(throws: NBDServerError.unknownDefaultExport("b")) {
            try NBDServer(exports: [NBDExport(name: "a", device: device)], defaultExport: "b")
        }
        let odd = try MemoryBlockDevice(size: 4096, minimumBlockSize: 3)
        #expect(throws: NBDServerError.badBlockSize(export: "odd", minimum: 3)) {
            try NBDServer(exports: [NBDExport(name: "odd", device: odd)])
        }
    }
}

@Suite("Stalled clients")
struct StalledClientTests {
    /// A client that sends reads but never reads the replies is dropped once
    /// a reply cannot be sent for `replyTimeout`; others carry on.
    @Test func clientThatStopsReadingIsDropped() throws {
        let configuration = NBDServerConfiguration(replyTimeout: 1)
        let fixture = try TestServer(
            exports: [NBDExport(name: "mem", device: try MemoryBlockDevice(size: 1 << 20))], configuration: configuration)
        let bystander = try RawClient(fixture.address, export: "mem")
        let stalled = try RawClient(fixture.address, export: "mem")
        var batch: [UInt8] = []
        for _ in 0..<64 { batch += stalled.encode(.read, offset: 0, length: 1 << 20).bytes }
        try stalled.send(batch)
        #expect(waitUntil { fixture.server.connectionCount == 1 })
        #expect(try bystander.read(at: 0, length: 4096).count == 4096)
    }
}
