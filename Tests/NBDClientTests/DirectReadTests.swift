import Foundation
import NBDClient
import NBDProtocol
import Sockets
import Testing

/// Large READ payloads, which the reader places straight into the caller's
/// buffer (read from the socket directly once their header is checked),
/// against scripted servers that split, stall, die or lie mid-payload.
@Suite("NBDConnection reading large payloads directly")
struct DirectReadTests {
    static let length = 1 << 20

    /// A server answering the first READ with `reply(request)`, sent in
    /// pieces of `piece` bytes with `pause` seconds between them, and then
    /// (unless `thenStop`) answering further requests honestly with 0x33.
    static func server(
        piece: Int, pause: Double, thenStop: Bool = false, _ reply: @escaping @Sendable (RequestHeader) -> [UInt8]
    ) throws -> ScriptedServer {
        try ScriptedServer { session in
            guard let request = session.nextRequest() else { return }
            let bytes = reply(request.header)
            for start in stride(from: 0, to: bytes.count, by: piece) {
                session.send(Array(bytes[start..<min(start + piece, bytes.count)]))
                if pause > 0 { Thread.sleep(forTimeInterval: pause) }
            }
            if thenStop {
                _ = session.waitForClientToHangUp()
                return
            }
            session.serveHonestly(fill: 0x33)
        }
    }

    static func connect(_ server: ScriptedServer, structured: Bool = true, requestTimeout: Double = 10) throws -> NBDConnection {
        try HostileServerTests.connect(server, structured: structured, requestTimeout: requestTimeout)
    }

    @Test(arguments: [true, false])
    func aPayloadTrickledInSmallPiecesArrivesWhole(structured: Bool) throws {
        let data = randomBytes(Self.length)
        let server = try Self.server(piece: 100_003, pause: 0.01) { header in
            // Two chunks (structured): the second half first, then the first.
            guard structured else { return Wire.simpleReply(cookie: header.cookie) + data }
            let half = Self.length / 2
            return Wire.offsetData(cookie: header.cookie, offset: header.offset + UInt64(half), data: Array(data[half...]), done: false)
                + Wire.offsetData(cookie: header.cookie, offset: header.offset, data: Array(data[..<half]), done: true)
        }
        defer { server.close() }
        let connection = try Self.connect(server, structured: structured)
        #expect(try connection.read(at: 4096, length: Self.length) == data)
        // The stream is still in step: the next reply decodes.
        #expect(try connection.read(at: 0, length: 70_000) == [UInt8](repeating: 0x33, count: 70_000))
    }

    @Test func aChunkOutsideItsRequestIsRefusedBeforeItsPayloadIsRead() throws {
        let server = try Self.server(piece: 1 << 20, pause: 0, thenStop: true) { header in
            Wire.offsetData(cookie: header.cookie, offset: header.offset + 4096, data: randomBytes(Self.length), done: true)
        }
        defer { server.close() }
        let connection = try Self.connect(server)
        var buffer = [UInt8](repeating: 0xAA, count: Self.length)
        let result = buffer.withUnsafeMutableBytes { connection.perform([.read(offset: 4096, into: $0)])[0] }
        #expect(throws: NBDClientError.protocolViolation(.readOutOfRange(cookie: 1, offset: 8192, length: UInt64(Self.length)))) {
            try result.get()
        }
        #expect(buffer.allSatisfy { $0 == 0xAA })
    }

    @Test func aServerDyingMidPayloadFailsTheRead() throws {
        let server = try ScriptedServer { session in
            guard let request = session.nextRequest() else { return }
            let reply = Wire.offsetData(cookie: request.header.cookie, offset: request.header.offset, data: randomBytes(Self.length), done: true)
            session.send(Array(reply[..<300_000]))
            Thread.sleep(forTimeInterval: 0.2)
        }
        defer { server.close() }
        let connection = try Self.connect(server)
        HostileServerTests.expectFailure(.connectionLost(.connectionClosed)) { () throws(NBDClientError) in
            _ = try connection.read(at: 0, length: Self.length)
        }
    }

    @Test func aStartedReadWhosePayloadStallsTimesOut() throws {
        let server = try ScriptedServer { session in
            guard let request = session.nextRequest() else { return }
            let reply = Wire.offsetData(cookie: request.header.cookie, offset: request.header.offset, data: randomBytes(Self.length), done: true)
            session.send(Array(reply[..<300_000]))
            _ = session.waitForClientToHangUp()
        }
        defer { server.close() }
        let connection = try Self.connect(server, requestTimeout: 0.5)
        let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: Self.length, alignment: 16)
        defer { buffer.deallocate() }
        let recorder = CompletionRecorder()
        let begin = Date()
        #expect(connection.start([.read(offset: 0, into: buffer)], completion: recorder.batchCompletion))
        let results = try #require(recorder.wait(timeout: 5), "the read never timed out")
        let elapsed = Date().timeIntervalSince(begin)
        #expect(results.map(\.failure) == [.timedOut(.reply)])
        #expect(elapsed >= 0.5 && elapsed < 2, "timed out after \(elapsed) s")
        #expect(connection.failure == .timedOut(.reply))
    }
}
