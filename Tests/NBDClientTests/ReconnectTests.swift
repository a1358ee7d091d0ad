import BlockDevice
import Foundation
import NBDClient
import NBDProtocol
import Sockets
import TestSupport
import Testing

/// RemoteBlockDevice when the storage server dies and comes back. nbdkit's
/// file plugin keeps the data across restarts, as a storage domain would.
@Suite("RemoteBlockDevice across server restarts", .enabled(if: NBDKit.shouldRun), .serialized)
struct ReconnectTests {
    let directory: TemporaryDirectory
    let disk: String
    static let diskSize: UInt64 = 8 << 20

    init() throws {
        directory = try TemporaryDirectory()
        disk = directory.file("disk")
        try Self.makeFile(disk, size: Self.diskSize)
    }

    static func makeFile(_ path: String, size: UInt64) throws {
        guard FileManager.default.createFile(atPath: path, contents: nil) else { throw NBDKitError("cannot create \(path)") }
        let handle = try FileHandle(forWritingTo: URL(fileURLWithPath: path))
        try handle.truncate(atOffset: size)
        try handle.close()
    }

    var socket: String { directory.file("sock") }

    @Test func aReadInFlightWhenTheServerDiesSucceedsAfterItRestarts() throws {
        // Reads take a second, so the read below is inside nbdkit when it is killed.
        let arguments = ["--filter=delay", "file", disk, "delay-read=1"]
        var server = try NBDKit(socketPath: socket, arguments)
        let device = try RemoteBlockDevice(connectingTo: server.address, options: .forTests())
        let data = randomBytes(65536)
        try device.write(at: 4096, bytes: data, fua: true)

        let reader = Background { () -> Result<[UInt8], BlockDeviceError> in
            do throws(BlockDeviceError) { return .success(try device.read(at: 4096, count: data.count)) } catch { return .failure(error) }
        }
        Thread.sleep(forTimeInterval: 0.3)
        server.kill()
        Thread.sleep(forTimeInterval: 0.5)
        server = try NBDKit(socketPath: socket, arguments)

        let result = reader.wait(timeout: 15)
        #expect(result != nil, "the read never finished")
        #expect(try result?.get() == data)
        withExtendedLifetime(server) {}
    }

    @Test func requestsBetweenRestartsReconnectAndSeeEarlierWrites() throws {
        var server = try NBDKit(socketPath: socket, ["file", disk])
        let device = try RemoteBlockDevice(connectingTo: server.address, options: .forTests())
        let first = randomBytes(100_000)
        try device.write(at: 0, bytes: first)
        try device.flush()

        server.kill()
        server = try NBDKit(socketPath: socket, ["file", disk])
        #expect(try device.read(at: 0, count: first.count) == first)

        // And again, with the server down for a while before it returns.
        server.kill()
        let restart = Background { () -> NBDKit? in
            Thread.sleep(forTimeInterval: 1)
            return try? NBDKit(socketPath: self.socket, ["file", self.disk])
        }
        let second = randomBytes(50_000)
        try device.write(at: 200_000, bytes: second, fua: true)
        #expect(try device.read(at: 200_000, count: second.count) == second)
        #expect(try device.read(at: 0, count: first.count) == first)
        #expect(restart.wait(timeout: 15) != nil)
    }

    @Test func manyThreadsKeepWorkingAcrossARestart() throws {
        var server = try NBDKit(socketPath: socket, ["file", disk])
        let device = try RemoteBlockDevice(connectingTo: server.address, options: .forTests())
        let errors = Locked<[String]>([])
        let workers = Background { () -> Bool in
            runConcurrently(8, timeout: 40) { thread in
                for round in 0..<40 {
                    let offset = UInt64(thread) << 20 + UInt64(round % 8) * 65536
                    let data = randomBytes(65536)
                    device.writeAndReadBack(data, at: offset, label: "thread \(thread) round \(round)", errors: errors)
                    usleep(10_000)
                }
            }
        }
        Thread.sleep(forTimeInterval: 0.2)
        server.kill()
        Thread.sleep(forTimeInterval: 0.3)
        server = try NBDKit(socketPath: socket, ["file", disk])
        #expect(workers.wait(timeout: 45) == true)
        #expect(errors.value == [])
    }

    @Test func withNoServerRequestsFailAfterTheRetryWindow() throws {
        var server = try NBDKit(socketPath: socket, ["file", disk])
        let device = try RemoteBlockDevice(connectingTo: server.address, options: .forTests(retryWindow: 1))
        try device.write(at: 0, bytes: [1, 2, 3])
        server.kill()

        var start = Date()
        var buffer = [UInt8](repeating: 0, count: 512)
        let result = buffer.withUnsafeMutableBytes { device.perform([.read(offset: 0, into: $0)])[0] }
        let elapsed = Date().timeIntervalSince(start)
        guard case .failure(.retryWindowExpired(let seconds, let lastError)) = result else {
            Issue.record("expected the retry window to expire, got \(result)")
            return
        }
        #expect(seconds == 1)
        switch lastError {
        case .connect, .connectionLost: break
        default: Issue.record("unexpected last error \(lastError)")
        }
        #expect(elapsed >= 1 && elapsed < 5)

        // Through the BlockDevice interface the same failure is "unavailable".
        start = Date()
        #expect(throws: BlockDeviceError.self) { _ = try device.read(at: 0, count: 3) }
        do { _ = try device.read(at: 0, count: 3) } catch {
            guard case .unavailable = error else {
                Issue.record("expected unavailable, got \(error)")
                return
            }
        }
        #expect(Date().timeIntervalSince(start) < 10)

        // Once the server is back, the next request gets through.
        server = try NBDKit(socketPath: socket, ["file", disk])
        #expect(try device.read(at: 0, count: 3) == [1, 2, 3])
    }

    @Test func aServerAwayLongerThanTheBackoffIsFoundAsSoonAsItListens() throws {
        // A storage domain killed over and over lives about as long as the
        // client's grown backoff: attempts spaced like that can keep
        // missing it. With nobody listening, attempts stay one
        // `initialBackoff` apart (here 20 ms) whatever the backoff reached.
        var server = try NBDKit(socketPath: socket, ["file", disk])
        var options = RemoteBlockDevice.Options.forTests(retryWindow: 30)
        options.maxBackoff = 8
        let device = try RemoteBlockDevice(connectingTo: server.address, options: options)
        let data = randomBytes(4096)
        try device.write(at: 0, bytes: data, fua: true)
        server.kill()

        let reader = Background { () -> (Result<[UInt8], BlockDeviceError>, Date) in
            do throws(BlockDeviceError) { return (.success(try device.read(at: 0, count: data.count)), Date()) } catch {
                return (.failure(error), Date())
            }
        }
        // Exponential attempts from 20 ms would be at 0.02, 0.06, 0.14,
        // 0.30, 0.62, 1.26, 2.54 and 5.10 s: the server is back between
        // the last two.
        Thread.sleep(forTimeInterval: 2.8)
        server = try NBDKit(socketPath: socket, ["file", disk])
        let listening = Date()
        let outcome = reader.wait(timeout: 20)
        #expect(try outcome?.0.get() == data)
        if let answered = outcome?.1 {
            #expect(answered.timeIntervalSince(listening) < 1.5, "reconnected \(answered.timeIntervalSince(listening)) s after the server listened")
        }
        withExtendedLifetime(server) {}
    }

    @Test func aServerThatComesBackWithADifferentExportIsRefused() throws {
        var server = try NBDKit(socketPath: socket, ["file", disk])
        let device = try RemoteBlockDevice(connectingTo: server.address, options: .forTests())
        try device.write(at: 0, bytes: [1, 2, 3])
        server.kill()
        let other = directory.file("other")
        try Self.makeFile(other, size: 2 * Self.diskSize)
        server = try NBDKit(socketPath: socket, ["file", other])

        let changed = NBDClientError.exportChanged("size was \(Self.diskSize) bytes, now \(2 * Self.diskSize)")
        var buffer = [UInt8](repeating: 0, count: 3)
        let result = buffer.withUnsafeMutableBytes { device.perform([.read(offset: 0, into: $0)])[0] }
        #expect(throws: changed) { try result.get() }
        // For good: even a request after that fails the same way, at once.
        let start = Date()
        let again = buffer.withUnsafeMutableBytes { device.perform([.read(offset: 0, into: $0)])[0] }
        #expect(throws: changed) { try again.get() }
        #expect(Date().timeIntervalSince(start) < 1)
    }

    @Test func aServerTooSlowForTheRequestTimeoutRunsOutTheRetryWindow() throws {
        let server = try NBDKit(socketPath: socket, ["--filter=delay", "file", disk, "delay-read=3"])
        let device = try RemoteBlockDevice(connectingTo: server.address, options: .forTests(retryWindow: 1.5, requestTimeout: 0.5))
        let start = Date()
        var buffer = [UInt8](repeating: 0, count: 512)
        let result = buffer.withUnsafeMutableBytes { device.perform([.read(offset: 0, into: $0)])[0] }
        #expect(throws: NBDClientError.retryWindowExpired(seconds: 1.5, lastError: .timedOut(.reply))) { try result.get() }
        let elapsed = Date().timeIntervalSince(start)
        #expect(elapsed >= 1.5 && elapsed < 6)
        // Writes are not delayed: the device is still usable.
        try device.write(at: 0, bytes: [4, 5, 6])
    }
}

/// RemoteBlockDevice against scripted servers that misbehave, then recover (or not).
@Suite("RemoteBlockDevice against hostile servers")
struct HostileReconnectTests {
    @Test func aServerThatAlwaysBreaksTheProtocolIsRetriedOnlyForTheWindow() throws {
        let server = try ScriptedServer { session in
            while let request = session.nextRequest() {
                if request.header.command == .disconnect { return }
                session.send(Wire.simpleReply(cookie: request.header.cookie, magic: 0x0BAD_0BAD))
            }
        }
        defer { server.close() }
        let device = try RemoteBlockDevice(connectingTo: server.address, options: .forTests(retryWindow: 1))
        let start = Date()
        var buffer = [UInt8](repeating: 0, count: 512)
        let result = buffer.withUnsafeMutableBytes { device.perform([.read(offset: 0, into: $0)])[0] }
        let elapsed = Date().timeIntervalSince(start)
        #expect(throws: NBDClientError.retryWindowExpired(seconds: 1, lastError: .protocolViolation(.badReplyMagic(0x0BAD_0BAD)))) {
            try result.get()
        }
        #expect(elapsed >= 1 && elapsed < 5)
        // It did reconnect and retry, with backoff rather than in a tight loop.
        #expect(server.connectionCount >= 3)
        #expect(server.connectionCount < 40)
    }

    @Test func shutdownFromTheServerMovesRequestsToANewConnection() throws {
        let server = try ScriptedServer { session in
            guard session.index > 0 else {
                while let request = session.nextRequest() {
                    if request.header.command == .disconnect { return }
                    session.send(Wire.errorChunk(cookie: request.header.cookie, error: .shutdown, message: "going down"))
                }
                return
            }
            session.serveHonestly(fill: 0x42)
        }
        defer { server.close() }
        let device = try RemoteBlockDevice(connectingTo: server.address, options: .forTests())
        #expect(try device.read(at: 0, count: 1000) == [UInt8](repeating: 0x42, count: 1000))
        #expect(server.connectionCount == 2)
    }

    @Test func aConnectionThatStopsAnsweringIsReplaced() throws {
        let server = try ScriptedServer { session in
            guard session.index > 0 else {
                while session.nextRequest() != nil {}  // swallow requests, answer nothing
                return
            }
            session.serveHonestly(fill: 0x17)
        }
        defer { server.close() }
        let device = try RemoteBlockDevice(connectingTo: server.address, options: .forTests(requestTimeout: 0.5))
        let start = Date()
        #expect(try device.read(at: 0, count: 4096) == [UInt8](repeating: 0x17, count: 4096))
        #expect(Date().timeIntervalSince(start) >= 0.5)
        #expect(server.connectionCount == 2)
    }

    @Test func anErrorReplyIsNotRetried() throws {
        let server = try ScriptedServer { session in
            while let request = session.nextRequest() {
                if request.header.command == .disconnect { return }
                session.send(Wire.errorChunk(cookie: request.header.cookie, error: .ioError, message: "bad sector"))
            }
        }
        defer { server.close() }
        let device = try RemoteBlockDevice(connectingTo: server.address, options: .forTests())
        #expect(throws: BlockDeviceError.io(operation: "NBD_CMD_READ at 0+512 (bad sector)", errno: EIO)) {
            _ = try device.read(at: 0, count: 512)
        }
        #expect(server.connectionCount == 1)
    }
}
