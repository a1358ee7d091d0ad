import Foundation
import NBDClient
import NBDProtocol
import Sockets
import TestSupport
import Testing

/// NBDConnection against scripted servers that break the protocol. Each
/// test asserts the exact error, that it arrives well before any timeout
/// (so it was detected, not waited out), and that the client hung up.
@Suite("NBDConnection against hostile servers")
struct HostileServerTests {
    static func connect(
        _ server: ScriptedServer, structured: Bool = true, requestTimeout: Double = 10, handshakeTimeout: Double = 10
    ) throws(NBDClientError) -> NBDConnection {
        try NBDConnection.connect(
            to: server.address,
            options: NBDConnection.Options(
                structuredReplies: structured, handshakeTimeout: handshakeTimeout, requestTimeout: requestTimeout))
    }

    /// Runs `body`, which must fail with `expected` in less than `within` seconds.
    static func expectFailure(
        _ expected: NBDClientError, within limit: Double = 5, sourceLocation: SourceLocation = #_sourceLocation,
        _ body: () throws(NBDClientError) -> Void
    ) {
        let start = Date()
        do {
            try body()
            Issue.record("succeeded; expected \(expected)", sourceLocation: sourceLocation)
        } catch {
            #expect(error == expected, sourceLocation: sourceLocation)
        }
        #expect(Date().timeIntervalSince(start) < limit, "took too long", sourceLocation: sourceLocation)
    }

    /// A server answering the first request with `reply(request)`, then
    /// recording whether the client hung up.
    static func replyingOnce(_ reply: @escaping @Sendable (RequestHeader) -> [UInt8]) throws -> (ScriptedServer, Locked<RequestHeader?>, Locked<Bool>) {
        let seen = Locked<RequestHeader?>(nil)
        let hungUp = Locked(false)
        let server = try ScriptedServer { session in
            guard let request = session.nextRequest() else { return }
            seen.withLock { $0 = request.header }
            session.send(reply(request.header))
            hungUp.withLock { $0 = session.waitForClientToHangUp() }
        }
        return (server, seen, hungUp)
    }

    static func read(_ connection: NBDConnection, at offset: UInt64 = 4096, length: Int = 4096) throws(NBDClientError) {
        _ = try connection.read(at: offset, length: length)
    }

    // MARK: Transmission

    @Test func replyWithAnUnknownCookie() throws {
        let (server, seen, hungUp) = try Self.replyingOnce { Wire.simpleReply(cookie: $0.cookie &+ 1000) }
        defer { server.close() }
        let connection = try Self.connect(server)
        Self.expectFailure(.protocolViolation(.unknownCookie(1001))) { () throws(NBDClientError) in try Self.read(connection) }
        #expect(seen.value?.cookie == 1)
        #expect(eventually(timeout: 5) { hungUp.value })
        #expect(connection.failure == .protocolViolation(.unknownCookie(1001)))
    }

    @Test func replyToARequestNeverSent() throws {
        let server = try ScriptedServer { session in
            session.send(Wire.simpleReply(cookie: 42))
            _ = session.waitForClientToHangUp()
        }
        defer { server.close() }
        let connection = try Self.connect(server)
        #expect(eventually(timeout: 5) { connection.failure != nil })
        #expect(connection.failure == .protocolViolation(.unknownCookie(42)))
        #expect(!connection.isUsable)
        // Later requests fail at once with the error that killed the connection.
        Self.expectFailure(.protocolViolation(.unknownCookie(42)), within: 1) { () throws(NBDClientError) in try Self.read(connection) }
    }

    @Test func aSecondReplyToTheSameRequest() throws {
        let server = try ScriptedServer { session in
            guard let request = session.nextRequest() else { return }
            session.answer(request)
            session.answer(request)
            _ = session.waitForClientToHangUp()
        }
        defer { server.close() }
        let connection = try Self.connect(server)
        try connection.flush()
        #expect(eventually(timeout: 5) { connection.failure != nil })
        #expect(connection.failure == .protocolViolation(.unknownCookie(1)))
    }

    @Test func badReplyMagic() throws {
        let (server, _, hungUp) = try Self.replyingOnce { Wire.simpleReply(cookie: $0.cookie, magic: 0xDEAD_BEEF) }
        defer { server.close() }
        let connection = try Self.connect(server)
        Self.expectFailure(.protocolViolation(.badReplyMagic(0xDEAD_BEEF))) { () throws(NBDClientError) in try Self.read(connection) }
        #expect(eventually(timeout: 5) { hungUp.value })
    }

    @Test func structuredChunkLongerThanAnyPayload() throws {
        // Only the header is sent: the length alone must condemn it, before
        // the client waits for (or allocates) four gigabytes.
        let (server, _, hungUp) = try Self.replyingOnce {
            Wire.chunk(cookie: $0.cookie, type: .offsetData, done: true, payload: [], length: 0xFFFF_FFFF)
        }
        defer { server.close() }
        let connection = try Self.connect(server)
        let limit = NBDLimits.maxPayload + NBDLimits.maxChunkOverhead
        Self.expectFailure(.protocolViolation(.chunkTooLong(cookie: 1, length: 0xFFFF_FFFF, limit: limit))) {
            () throws(NBDClientError) in try Self.read(connection)
        }
        #expect(eventually(timeout: 5) { hungUp.value })
    }

    @Test func dataChunkOutsideTheRequest() throws {
        let (server, _, _) = try Self.replyingOnce {
            Wire.offsetData(cookie: $0.cookie, offset: 0, data: [UInt8](repeating: 7, count: 4096), done: true)
        }
        defer { server.close() }
        let connection = try Self.connect(server)
        Self.expectFailure(.protocolViolation(.readOutOfRange(cookie: 1, offset: 0, length: 4096))) {
            () throws(NBDClientError) in try Self.read(connection, at: 4096)
        }
    }

    @Test func dataChunkLongerThanTheRequest() throws {
        let (server, _, _) = try Self.replyingOnce {
            Wire.offsetData(cookie: $0.cookie, offset: $0.offset, data: [UInt8](repeating: 7, count: 8192), done: true)
        }
        defer { server.close() }
        let connection = try Self.connect(server)
        Self.expectFailure(.protocolViolation(.readOutOfRange(cookie: 1, offset: 4096, length: 8192))) {
            () throws(NBDClientError) in try Self.read(connection, at: 4096, length: 4096)
        }
    }

    @Test func overlappingDataChunks() throws {
        let (server, _, _) = try Self.replyingOnce {
            Wire.offsetData(cookie: $0.cookie, offset: $0.offset, data: [UInt8](repeating: 1, count: 2048), done: false)
                + Wire.offsetData(cookie: $0.cookie, offset: $0.offset + 1024, data: [UInt8](repeating: 2, count: 3072), done: true)
        }
        defer { server.close() }
        let connection = try Self.connect(server)
        Self.expectFailure(.protocolViolation(.overlappingReadChunks(cookie: 1, offset: 5120))) {
            () throws(NBDClientError) in try Self.read(connection, at: 4096, length: 4096)
        }
    }

    @Test func doneWithIncompleteData() throws {
        let (server, _, _) = try Self.replyingOnce {
            Wire.offsetData(cookie: $0.cookie, offset: $0.offset, data: [UInt8](repeating: 7, count: 1024), done: true)
        }
        defer { server.close() }
        let connection = try Self.connect(server)
        Self.expectFailure(.protocolViolation(.incompleteRead(cookie: 1, received: 1024, expected: 4096))) {
            () throws(NBDClientError) in try Self.read(connection)
        }
    }

    @Test func simpleReplyToAReadUnderStructuredReplies() throws {
        let (server, _, _) = try Self.replyingOnce {
            Wire.simpleReply(cookie: $0.cookie) + [UInt8](repeating: 0, count: Int($0.length))
        }
        defer { server.close() }
        let connection = try Self.connect(server)
        Self.expectFailure(.protocolViolation(.simpleReplyToStructuredRead(cookie: 1))) {
            () throws(NBDClientError) in try Self.read(connection)
        }
    }

    @Test func structuredReplyThatWasNeverNegotiated() throws {
        let (server, _, _) = try Self.replyingOnce {
            Wire.offsetData(cookie: $0.cookie, offset: $0.offset, data: [UInt8](repeating: 0, count: Int($0.length)), done: true)
        }
        defer { server.close() }
        let connection = try Self.connect(server, structured: false)
        #expect(!connection.session.structuredReplies)
        Self.expectFailure(.protocolViolation(.unexpectedStructuredReply(cookie: 1))) {
            () throws(NBDClientError) in try Self.read(connection)
        }
    }

    @Test func serverClosesInTheMiddleOfAReply() throws {
        let server = try ScriptedServer { session in
            guard let request = session.nextRequest() else { return }
            let reply = Wire.offsetData(cookie: request.header.cookie, offset: request.header.offset, data: [UInt8](repeating: 9, count: 4096), done: true)
            session.send(Array(reply.prefix(100)))
            // Returning closes the connection.
        }
        defer { server.close() }
        let connection = try Self.connect(server)
        Self.expectFailure(.connectionLost(.connectionClosed)) { () throws(NBDClientError) in try Self.read(connection) }
    }

    @Test func serverThatNeverRepliesTimesOut() throws {
        let hungUp = Locked(false)
        let server = try ScriptedServer { session in
            _ = session.nextRequest()
            hungUp.withLock { $0 = session.waitForClientToHangUp() }
        }
        defer { server.close() }
        let connection = try Self.connect(server, requestTimeout: 0.5)
        let start = Date()
        Self.expectFailure(.timedOut(.reply)) { () throws(NBDClientError) in try Self.read(connection) }
        #expect(Date().timeIntervalSince(start) >= 0.5)
        #expect(eventually(timeout: 5) { hungUp.value })
    }

    @Test func everyWaitingRequestIsWokenWhenTheConnectionDies() throws {
        let server = try ScriptedServer { session in
            // Wait for all twelve (8 threads + a batch of 4), then break the stream.
            for _ in 0..<12 { guard session.nextRequest() != nil else { return } }
            session.send([0xBA, 0xD0, 0xBA, 0xD0])
            _ = session.waitForClientToHangUp()
        }
        defer { server.close() }
        let connection = try Self.connect(server)
        let errors = Locked<[NBDClientError]>([])
        let batch = Background { () -> [Result<Void, NBDClientError>] in
            var buffer = [UInt8](repeating: 0, count: 4 * 512)
            return buffer.withUnsafeMutableBytes { raw in
                connection.perform((0..<4).map { .read(offset: UInt64($0) * 512, into: UnsafeMutableRawBufferPointer(rebasing: raw[($0 * 512)..<($0 * 512 + 512)])) })
            }
        }
        let finished = runConcurrently(8, timeout: 8) { _ in
            do throws(NBDClientError) {
                try Self.read(connection)
            } catch {
                errors.withLock { $0.append(error) }
            }
        }
        #expect(finished)
        let violation = NBDClientError.protocolViolation(.badReplyMagic(0xBAD0_BAD0))
        #expect(errors.value == Array(repeating: violation, count: 8))
        let batchResults = batch.wait(timeout: 8)
        #expect(batchResults?.count == 4)
        for result in batchResults ?? [] {
            #expect(throws: violation) { try result.get() }
        }
    }

    @Test func serverErrorWithMessageLeavesTheConnectionUsable() throws {
        let server = try ScriptedServer { session in
            guard let first = session.nextRequest() else { return }
            session.send(Wire.errorChunk(cookie: first.header.cookie, error: .ioError, message: "disk on fire"))
            session.serveHonestly(fill: 0x5A)
        }
        defer { server.close() }
        let connection = try Self.connect(server)
        Self.expectFailure(.server(.ioError, message: "disk on fire")) { () throws(NBDClientError) in try Self.read(connection) }
        #expect(connection.isUsable)
        #expect(try connection.read(at: 0, length: 100) == [UInt8](repeating: 0x5A, count: 100))
    }

    @Test func holesReadAsZeroesAndChunksMayComeInAnyOrder() throws {
        let server = try ScriptedServer { session in
            guard let request = session.nextRequest() else { return }
            let (cookie, offset) = (request.header.cookie, request.header.offset)
            session.send(
                Wire.offsetData(cookie: cookie, offset: offset + 3072, data: [UInt8](repeating: 3, count: 1024), done: false)
                    + Wire.offsetHole(cookie: cookie, offset: offset + 1024, length: 2048, done: false)
                    + Wire.offsetData(cookie: cookie, offset: offset, data: [UInt8](repeating: 1, count: 1024), done: false)
                    + Wire.chunk(cookie: cookie, type: .none, done: true, payload: []))
            session.serveHonestly()
        }
        defer { server.close() }
        let connection = try Self.connect(server)
        var buffer = [UInt8](repeating: 0xAA, count: 4096)
        try buffer.withUnsafeMutableBytes { try connection.read(at: 8192, into: $0) }
        #expect(buffer == [UInt8](repeating: 1, count: 1024) + [UInt8](repeating: 0, count: 2048) + [UInt8](repeating: 3, count: 1024))
    }

    /// Writes 32 MiB in one batch, more than the socket buffers hold.
    static func bigBatch(_ connection: NBDConnection) -> [Result<Void, NBDClientError>] {
        let data = [UInt8](repeating: 0x33, count: 1 << 20)
        return data.withUnsafeBytes { buffer in
            connection.perform((0..<32).map { .write(offset: UInt64($0) << 20, from: buffer, fua: false) })
        }
    }

    @Test func aServerThatStopsReadingTimesOutTheSender() throws {
        let server = try ScriptedServer { _ in Thread.sleep(forTimeInterval: 5) }  // never reads
        defer { server.close() }
        let connection = try Self.connect(server, requestTimeout: 0.5)
        let start = Date()
        let results = Self.bigBatch(connection)
        #expect(Date().timeIntervalSince(start) < 4)
        #expect(results.count == 32)
        for result in results { #expect(throws: NBDClientError.timedOut(.send)) { try result.get() } }
    }

    @Test func closingWhileASendIsBlockedDoesNotHang() throws {
        let server = try ScriptedServer { _ in Thread.sleep(forTimeInterval: 5) }  // never reads
        defer { server.close() }
        let connection = try Self.connect(server, requestTimeout: 30)
        let writer = Background { Self.bigBatch(connection) }
        Thread.sleep(forTimeInterval: 0.3)
        let start = Date()
        connection.close()
        #expect(Date().timeIntervalSince(start) < 1)
        let results = writer.wait(timeout: 5)
        #expect(results?.count == 32)
        for result in results ?? [] { #expect(throws: NBDClientError.closed) { try result.get() } }
    }

    // MARK: Handshake

    /// Holds a raw connection open until the client (or `close()`) ends it.
    static func waitForHangUp(_ socket: Socket) {
        var buffer = [UInt8](repeating: 0, count: 1024)
        while let count = try? buffer.withUnsafeMutableBytes({ try socket.read(into: $0) }), count > 0 {}
    }

    static func rawServer(_ body: @escaping @Sendable (Socket) -> Void) throws -> ScriptedServer {
        try ScriptedServer(.raw { socket, _ in body(socket) })
    }

    static func greeting(password: UInt64 = NBDMagic.initPassword, flags: HandshakeFlags = [.fixedNewstyle, .noZeroes]) -> [UInt8] {
        var bytes: [UInt8] = []
        bytes.appendBigEndian(password)
        bytes.appendBigEndian(NBDMagic.option)
        bytes.appendBigEndian(flags.rawValue)
        return bytes
    }

    @Test func handshakeWithABadGreetingMagic() throws {
        let server = try Self.rawServer { socket in
            try? socket.writeAll(Self.greeting(password: 0x1122_3344_5566_7788))
            Self.waitForHangUp(socket)
        }
        defer { server.close() }
        Self.expectFailure(.handshake(.badGreetingMagic(0x1122_3344_5566_7788))) { () throws(NBDClientError) in
            _ = try Self.connect(server)
        }
    }

    @Test func handshakeGarbage() throws {
        var garbage = randomBytes(200)
        garbage[0] = 0x00  // cannot be NBDMAGIC, which starts with 'N'
        let expected = garbage.prefix(8).reduce(UInt64(0)) { $0 << 8 | UInt64($1) }
        let server = try Self.rawServer { [garbage] socket in
            try? socket.writeAll(garbage)
            Self.waitForHangUp(socket)
        }
        defer { server.close() }
        Self.expectFailure(.handshake(.badGreetingMagic(expected))) { () throws(NBDClientError) in _ = try Self.connect(server) }
    }

    @Test func handshakeWithoutFixedNewstyle() throws {
        let server = try Self.rawServer { socket in
            try? socket.writeAll(Self.greeting(flags: []))
            Self.waitForHangUp(socket)
        }
        defer { server.close() }
        Self.expectFailure(.handshake(.notFixedNewstyle)) { () throws(NBDClientError) in _ = try Self.connect(server) }
    }

    @Test func handshakeWithAHugeOptionReply() throws {
        let server = try Self.rawServer { socket in
            try? socket.writeAll(Self.greeting())
            var buffer = [UInt8](repeating: 0, count: 256)
            _ = try? buffer.withUnsafeMutableBytes { try socket.read(into: $0) }
            var reply: [UInt8] = []
            reply.appendBigEndian(NBDMagic.optionReply)
            reply.appendBigEndian(OptionCode.structuredReply.rawValue)
            reply.appendBigEndian(OptionReplyType.ack.rawValue)
            reply.appendBigEndian(UInt32(1 << 30))
            try? socket.writeAll(reply)
            Self.waitForHangUp(socket)
        }
        defer { server.close() }
        Self.expectFailure(.handshake(.optionReplyTooLong(length: 1 << 30, limit: NBDLimits.maxOptionReplyLength))) {
            () throws(NBDClientError) in _ = try Self.connect(server)
        }
    }

    @Test func handshakeThatStallsTimesOut() throws {
        let server = try Self.rawServer { socket in
            // Half a greeting, then silence.
            try? socket.writeAll(Array(Self.greeting().prefix(9)))
            Self.waitForHangUp(socket)
        }
        defer { server.close() }
        let start = Date()
        Self.expectFailure(.timedOut(.handshake), within: 3) { () throws(NBDClientError) in
            _ = try Self.connect(server, handshakeTimeout: 0.5)
        }
        #expect(Date().timeIntervalSince(start) >= 0.5)
    }

    @Test func handshakeTricklingBytesCannotOutlastTheTimeout() throws {
        let server = try Self.rawServer { socket in
            // One byte every 100 ms keeps each read short but never finishes in time.
            for byte in Self.greeting() {
                guard (try? socket.writeAll([byte])) != nil else { return }
                Thread.sleep(forTimeInterval: 0.1)
            }
            Self.waitForHangUp(socket)
        }
        defer { server.close() }
        Self.expectFailure(.timedOut(.handshake), within: 3) { () throws(NBDClientError) in
            _ = try Self.connect(server, handshakeTimeout: 0.8)
        }
    }

    @Test func serverHangingUpDuringTheHandshake() throws {
        let server = try Self.rawServer { socket in try? socket.writeAll(Array(Self.greeting().prefix(5))) }
        defer { server.close() }
        Self.expectFailure(.connectionLost(.connectionClosed)) { () throws(NBDClientError) in _ = try Self.connect(server) }
    }
}
