import BlockDevice
import Glibc
import NBDProtocol
import NBDServer
import Sockets
import TestSupport
import Testing

@Suite("Transmission")
struct TransmissionTests {
    @Test(arguments: [true, false])
    func readsWritesAndZeroes(structured: Bool) throws {
        let device = try MemoryBlockDevice(size: 1 << 20)
        let fixture = try TestServer(exports: [NBDExport(name: "mem", device: device)])
        let client = try RawClient(fixture.address, export: "mem", structured: structured)
        let session = try #require(client.session)
        #expect(session.structuredReplies == structured)
        #expect(session.size == 1 << 20)
        #expect(session.flags.isSuperset(of: [
            .hasFlags, .sendFlush, .sendFUA, .sendTrim, .sendWriteZeroes, .sendFastZero, .canMultiConn,
        ]))
        #expect(!session.flags.contains(.readOnly))
        #expect(session.blockSize == BlockSizeConstraints(minimum: 1, preferred: 4096, maximum: NBDLimits.maxPayload))

        let data = pattern(100_000)
        try client.write(data, at: 1000, flags: .fua)
        #expect(try client.read(at: 1000, length: 100_000) == data)
        #expect(Array(device.snapshot()[1000..<101_000]) == data)
        #expect(try client.roundTrip(.flush).error == nil)
        #expect(try client.roundTrip(.writeZeroes, flags: [.noHole, .fastZero], offset: 2000, length: 500).error == nil)
        #expect(try client.read(at: 2000, length: 500) == [UInt8](repeating: 0, count: 500))
        #expect(try client.roundTrip(.trim, flags: .fua, offset: 10_000, length: 5000).error == nil)
        #expect(Array(device.snapshot()[10_000..<15_000]) == [UInt8](repeating: 0, count: 5000))
        #expect(try client.read(at: 1000, length: 1000) == Array(data[0..<1000]))
    }

    @Test func servesAFileAndATCPListener() throws {
        let directory = try TemporaryDirectory()
        let path = directory.file("disk.img", size: 4 << 20)
        let device = try FileBlockDevice(path: path)
        let fixture = try TestServer(exports: [NBDExport(name: "disk", device: device)], tcp: true)
        let client = try RawClient(fixture.address, export: "disk")
        let data = pattern(1 << 20, seed: 5)
        try client.write(data, at: 3 << 20)
        #expect(try client.read(at: 3 << 20, length: 1 << 20) == data)
        #expect(try client.roundTrip(.trim, offset: 3 << 20, length: 4096).error == nil)
        #expect(try client.read(at: 3 << 20, length: 4096) == [UInt8](repeating: 0, count: 4096))
    }

    /// 64 requests go out in one write before any reply is read; replies may
    /// come back in any order and are matched by cookie.
    @Test func pipelinesManyRequests() throws {
        let device = try MemoryBlockDevice(size: 1 << 20)
        let fixture = try TestServer(exports: [NBDExport(name: "mem", device: device)])
        let client = try RawClient(fixture.address, export: "mem")
        var batch: [UInt8] = []
        var expected: [UInt64: [UInt8]] = [:]
        for index in 0..<32 {
            let data = pattern(8192, seed: index)
            let write = client.encode(.write, offset: UInt64(index * 8192), length: 8192, payload: data)
            batch += write.bytes
            expected[write.cookie] = []
        }
        try client.send(batch)
        for _ in 0..<32 {
            let completion = try client.nextCompletion()
            #expect(completion.error == nil)
            #expect(expected.removeValue(forKey: completion.cookie) != nil)
        }
        batch = []
        for index in 0..<64 {
            let read = client.encode(.read, offset: UInt64((index % 32) * 8192), length: 8192)
            batch += read.bytes
            expected[read.cookie] = pattern(8192, seed: index % 32)
        }
        try client.send(batch)
        for _ in 0..<64 {
            let completion = try client.nextCompletion()
            #expect(completion.error == nil)
            #expect(expected.removeValue(forKey: completion.cookie) == completion.data)
        }
        #expect(expected.isEmpty)
    }

    /// Regression: small replies of one chunk are gathered; a large reply
    /// in the same chunk sends them first. When they overfill the socket
    /// (the client reads only after sending everything), their remainder
    /// must start the flusher, or every reply queued behind stays unsent.
    @Test func largeReplyAfterGatheredRepliesThatFillTheSocket() throws {
        let device = try MemoryBlockDevice(size: 4 << 20)
        let fixture = try TestServer(exports: [NBDExport(name: "mem", device: device)])
        let client = try RawClient(fixture.address, export: "mem")
        let data = pattern(4 << 20, seed: 9)
        try client.write(data, at: 0)
        var batch: [UInt8] = []
        var expected: [UInt64: [UInt8]] = [:]
        // About 1.6 MB of 4 KiB replies, far beyond a Unix socket's buffer.
        for index in 0..<400 {
            let offset = (index * 4096) % (4 << 20)
            let read = client.encode(.read, offset: UInt64(offset), length: 4096)
            batch += read.bytes
            expected[read.cookie] = Array(data[offset..<(offset + 4096)])
        }
        let large = client.encode(.read, offset: 1 << 20, length: 256 << 10)
        batch += large.bytes
        expected[large.cookie] = Array(data[(1 << 20)..<((1 << 20) + (256 << 10))])
        try client.send(batch)
        for _ in 0..<401 {
            let completion = try client.nextCompletion()
            #expect(completion.error == nil)
            #expect(expected.removeValue(forKey: completion.cookie) == completion.data)
        }
        #expect(expected.isEmpty)
    }

    @Test func servesManyConnectionsAtOnce() throws {
        let device = try MemoryBlockDevice(size: 32 * 65536)
        let fixture = try TestServer(exports: [NBDExport(name: "mem", device: device)])
        let address = fixture.address
        let results = try concurrently(32) { index -> Bool in
            let client = try RawClient(address, export: "mem", structured: index % 2 == 0)
            for round in 0..<8 {
                let data = pattern(65536, seed: index * 8 + round)
                try client.write(data, at: UInt64(index * 65536))
                guard try client.read(at: UInt64(index * 65536), length: 65536) == data else { return false }
            }
            return true
        }
        #expect(results == [Bool](repeating: true, count: 32))
    }

    @Test func disconnectFinishesRequestsInFlight() throws {
        let device = try MemoryBlockDevice(size: 1 << 20)
        let fixture = try TestServer(exports: [NBDExport(name: "mem", device: device)])
        let client = try RawClient(fixture.address, export: "mem")
        var batch: [UInt8] = []
        var cookies: Set<UInt64> = []
        for index in 0..<16 {
            let write = client.encode(.write, offset: UInt64(index * 4096), length: 4096, payload: pattern(4096, seed: index))
            batch += write.bytes
            cookies.insert(write.cookie)
        }
        batch += client.encode(.disconnect).bytes
        try client.send(batch)
        for _ in 0..<16 {
            let completion = try client.nextCompletion()
            #expect(completion.error == nil)
            #expect(cookies.remove(completion.cookie) != nil)
        }
        #expect(client.isClosedByServer())
        let contents = device.snapshot()
        for index in 0..<16 {
            #expect(Array(contents[(index * 4096)..<((index + 1) * 4096)]) == pattern(4096, seed: index))
        }
        #expect(waitUntil { fixture.server.connectionCount == 0 })
    }

    @Test func servesSeveralNamedExports() throws {
        let first = try MemoryBlockDevice(contents: pattern(8192, seed: 1))
        let second = try MemoryBlockDevice(contents: pattern(16384, seed: 2), readOnly: true)
        let fixture = try TestServer(
            exports: [
                NBDExport(name: "first", description: "the first", device: first),
                NBDExport(name: "second", device: second),
            ], defaultExport: "first")
        let one = try RawClient(fixture.address, export: "first")
        let two = try RawClient(fixture.address, export: "second", structured: false)
        let unnamed = try RawClient(fixture.address, export: "")
        #expect(one.session?.size == 8192)
        #expect(two.session?.size == 16384)
        #expect(two.session?.flags.contains(.readOnly) == true)
        #expect(unnamed.session?.size == 8192)
        #expect(try one.read(at: 0, length: 8192) == pattern(8192, seed: 1))
        #expect(try two.read(at: 0, length: 16384) == pattern(16384, seed: 2))
        #expect(try unnamed.read(at: 100, length: 100) == Array(pattern(8192, seed: 1)[100..<200]))

        let lister = try RawClient(connectingTo: fixture.address)
        let listed = try lister.negotiate(.list)
        guard case .listed(let exports) = listed else {
            Issue.record("expected a list, got \(listed)")
            return
        }
        #expect(exports.map(\.name) == ["first", "second"])
        #expect(exports.map(\.description) == ["the first", ""])
    }

    /// NBD_OPT_EXPORT_NAME, the oldest way in: no info, no structured replies.
    @Test func acceptsExportNameOption() throws {
        let fixture = try TestServer(memorySize: 65536)
        let client = try RawClient(connectingTo: fixture.address)
        let greeting = try client.receiveExactly(18)
        #expect(Array(greeting[0..<8]) == [0x4e, 0x42, 0x44, 0x4d, 0x41, 0x47, 0x49, 0x43])
        var bytes: [UInt8] = []
        bytes.appendBigEndian(ClientFlags([.fixedNewstyle, .noZeroes]).rawValue)
        bytes.appendBigEndian(NBDMagic.option)
        bytes.appendBigEndian(OptionCode.exportName.rawValue)
        bytes.appendBigEndian(UInt32(3))
        bytes += Array("mem".utf8)
        // A READ right behind the option, before the server has answered it.
        RequestHeader(command: .read, cookie: 77, offset: 0, length: 16).encode(into: &bytes)
        try client.send(bytes)
        let reply = try client.receiveExactly(10 + 16 + 16)
        #expect(Array(reply[0..<8]) == [0, 0, 0, 0, 0, 1, 0, 0])  // size 65536
        #expect(Array(reply[10..<14]) == [0x67, 0x44, 0x66, 0x98])  // simple reply magic
        #expect(Array(reply[14..<18]) == [0, 0, 0, 0])  // no error
        #expect(Array(reply[18..<26]) == [0, 0, 0, 0, 0, 0, 0, 77])
        #expect(Array(reply[26...]) == [UInt8](repeating: 0, count: 16))
    }

    @Test func shutdownClosesConnectionsAndRemovesTheSocket() throws {
        let fixture = try TestServer(memorySize: 65536)
        let client = try RawClient(fixture.address, export: "mem")
        let idle = try RawClient(connectingTo: fixture.address)
        _ = try idle.receiveExactly(18)
        #expect(try client.read(at: 0, length: 10).count == 10)
        #expect(fixture.server.shutdown())
        #expect(client.isClosedByServer())
        #expect(idle.isClosedByServer())
        #expect(access(fixture.socketPath!, F_OK) != 0)
        #expect(fixture.server.connectionCount == 0)
        #expect(throws: (any Error).self) { _ = try Socket.connect(to: fixture.address) }
    }
}

/// Runs `body` on `count` threads at once and returns the results in order.
func concurrently<T>(_ count: Int, _ body: @escaping (Int) throws -> T) throws -> [T] {
    let slots = (0..<count).map { _ in ResultSlot<T>() }
    let threads = try (0..<count).map { index in
        try concurrentlyStart { slots[index].value = try body(index) }
    }
    var failure: (any Error)?
    for thread in threads {
        do { try thread.join() } catch { failure = failure ?? error }
    }
    if let failure { throw failure }
    return slots.map { $0.value! }
}

final class ResultSlot<T>: @unchecked Sendable {
    var value: T?
}

/// Polls `condition` for up to ten seconds.
func waitUntil(_ condition: () -> Bool) -> Bool {
    let deadline = monotonic() + 10
    while monotonic() < deadline {
        if condition() { return true }
        usleep(10_000)
    }
    return condition()
}
