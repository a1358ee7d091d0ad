import BlockDevice
import Glibc
import NBDProtocol
import NBDServer
import Sockets
import TestSupport
import Testing

/// Every class of bad request gets its exact NBD error, and neither the
/// connection that sent it nor any other connection is disturbed.
@Suite("Request errors")
struct RequestErrorTests {
    static let size: UInt64 = 1 << 20

    /// A server with a writable export "rw", a read-only export "ro" and a
    /// tmpfs file "shm" that cannot zero without holes.
    final class Fixture {
        let directory: TemporaryDirectory
        let server: TestServer
        let memory: MemoryBlockDevice

        init() throws {
            directory = try TemporaryDirectory()
            memory = try MemoryBlockDevice(size: RequestErrorTests.size)
            let shmDirectory = "/dev/shm"
            var template = Array("\(shmDirectory)/bulkhead-srv-XXXXXX".utf8CString)
            let fd = template.withUnsafeMutableBufferPointer { mkstemp($0.baseAddress!) }
            precondition(fd >= 0)
            ftruncate(fd, 1 << 20)
            close(fd)
            let shmPath = String(decoding: template.dropLast().map { UInt8(bitPattern: $0) }, as: UTF8.self)
            defer { unlink(shmPath) }  // The open device keeps the inode.
            server = try TestServer(exports: [
                NBDExport(name: "rw", device: memory),
                NBDExport(name: "ro", device: try MemoryBlockDevice(size: RequestErrorTests.size), readOnly: true),
                NBDExport(name: "shm", device: try FileBlockDevice(path: shmPath)),
            ])
        }
    }

    /// Sends one request, expects `expected`, then proves the connection and
    /// a second, already open connection still work.
    func expectRefusal(
        _ expected: NBDErrorCode, export: String = "rw", structured: Bool = true, _ command: Command,
        flags: CommandFlags = [], offset: UInt64 = 0, length: UInt32 = 0, payload: [UInt8]? = nil
    ) throws {
        let fixture = try Fixture()
        let client = try RawClient(fixture.server.address, export: export, structured: structured)
        let bystander = try RawClient(fixture.server.address, export: "rw")
        let completion = try client.roundTrip(
            command, flags: flags, offset: offset, length: length, payload: payload ?? [])
        #expect(completion.error == expected, "\(command) flags \(flags.rawValue) at \(offset)+\(length)")
        if structured { #expect(!completion.message.isEmpty) }
        // The same connection carries on.
        #expect(try client.read(at: 0, length: 4096).count == 4096)
        // And so does another.
        try bystander.write(pattern(4096), at: 8192)
        #expect(try bystander.read(at: 8192, length: 4096) == pattern(4096))
    }

    @Test(arguments: [true, false])
    func readPastTheEndIsInvalid(structured: Bool) throws {
        try expectRefusal(.invalid, structured: structured, .read, offset: Self.size - 4096, length: 8192)
    }

    @Test func writePastTheEndIsNoSpace() throws {
        try expectRefusal(.noSpace, .write, offset: Self.size - 10, length: 20, payload: pattern(20))
        try expectRefusal(.noSpace, .writeZeroes, offset: Self.size, length: 1)
        try expectRefusal(.invalid, .trim, offset: Self.size, length: 1)
    }

    @Test func offsetOverflowIsRefused() throws {
        try expectRefusal(.invalid, .read, offset: UInt64.max - 100, length: 4096)
        try expectRefusal(.noSpace, .write, offset: UInt64.max - 100, length: 4096, payload: pattern(4096))
        try expectRefusal(.invalid, .trim, offset: UInt64.max, length: UInt32.max)
    }

    @Test(arguments: [UInt16(5), 7, 8, 42, 0xffff])
    func unknownCommandIsInvalid(command: UInt16) throws {
        try expectRefusal(.invalid, Command(rawValue: command), offset: 0, length: 4096)
    }

    @Test func unknownFlagIsInvalid() throws {
        try expectRefusal(.invalid, .read, flags: CommandFlags(rawValue: 1 << 7), length: 4096)
        try expectRefusal(.invalid, .write, flags: CommandFlags(rawValue: 1 << 12), length: 16, payload: pattern(16))
        // Flags that exist but do not apply to the command. (FUA is valid on
        // every command once NBD_FLAG_SEND_FUA is advertised.)
        try expectRefusal(.invalid, .read, flags: .noHole, length: 4096)
        try expectRefusal(.invalid, .trim, flags: .noHole, length: 4096)
    }

    @Test func zeroLengthIsInvalid() throws {
        try expectRefusal(.invalid, .read, offset: 0, length: 0)
        try expectRefusal(.invalid, .flush, offset: 1, length: 0)
    }

    @Test func readOnlyExportRefusesChanges() throws {
        try expectRefusal(.permissionDenied, export: "ro", .write, length: 512, payload: pattern(512))
        try expectRefusal(.permissionDenied, export: "ro", .trim, length: 4096)
        try expectRefusal(.permissionDenied, export: "ro", .writeZeroes, length: 4096)
    }

    @Test func oversizedReadIsInvalid() throws {
        try expectRefusal(.invalid, .read, length: NBDLimits.maxPayload + 4096)
        try expectRefusal(.invalid, .read, length: UInt32.max)
    }

    /// The 32+ MiB payload is sent in full; the server skips it and the
    /// very next request on the connection works.
    @Test(arguments: [true, false])
    func oversizedWriteIsInvalidAndSkipped(structured: Bool) throws {
        let fixture = try Fixture()
        let client = try RawClient(fixture.server.address, export: "rw", structured: structured)
        let bystander = try RawClient(fixture.server.address, export: "rw")
        let length = NBDLimits.maxPayload + 4096
        // Payload bytes that look like request headers must not be decoded.
        var payload: [UInt8] = []
        for index in 0..<(Int(length) / 28) {
            RequestHeader(command: .write, cookie: 9999, offset: UInt64(index), length: 1).encode(into: &payload)
        }
        payload += [UInt8](repeating: 0x25, count: Int(length) - payload.count)
        let oversized = client.encode(.write, offset: 0, length: length, payload: payload)
        let following = client.encode(.read, offset: 0, length: 4096)
        // The reply to the oversized write may come before the server has
        // read the payload, so send from another thread.
        let bytes = oversized.bytes + following.bytes
        let socket = client.socket
        let sender = try concurrentlyStart { try socket.writeAll(bytes) }
        let first = try client.nextCompletion()
        let second = try client.nextCompletion()
        try sender.join()
        #expect(first.cookie == oversized.cookie && first.error == .invalid)
        #expect(second.cookie == following.cookie && second.error == nil && second.data.count == 4096)
        #expect(fixture.memory.snapshot()[0..<4096].allSatisfy { $0 == 0 })
        try client.write(pattern(100), at: 0)
        #expect(try client.read(at: 0, length: 100) == pattern(100))
        #expect(try bystander.read(at: 0, length: 100) == pattern(100))
    }

    @Test func fastZeroThatWouldWriteIsNotSupported() throws {
        try expectRefusal(.notSupported, export: "shm", .writeZeroes, flags: [.noHole, .fastZero], length: 65536)
    }

    @Test func badRequestMagicClosesOnlyThatConnection() throws {
        let fixture = try Fixture()
        let client = try RawClient(fixture.server.address, export: "rw")
        let bystander = try RawClient(fixture.server.address, export: "rw")
        var bytes = client.encode(.read, offset: 0, length: 512).bytes
        bytes[0] ^= 0xff
        try client.send(bytes)
        #expect(client.isClosedByServer())
        #expect(try bystander.read(at: 0, length: 512).count == 512)
        let newcomer = try RawClient(fixture.server.address, export: "rw")
        #expect(try newcomer.read(at: 0, length: 512).count == 512)
    }

    /// A client that vanishes mid-request leaves the server serving others.
    @Test func truncatedRequestAndHangupAreHarmless() throws {
        let fixture = try Fixture()
        let bystander = try RawClient(fixture.server.address, export: "rw")
        for cut in [1, 27, 28, 100] {
            let client = try RawClient(fixture.server.address, export: "rw")
            let bytes = client.encode(.write, offset: 0, length: 4096, payload: pattern(4096)).bytes
            try client.send(Array(bytes[..<cut]))
            client.socket.shutdown()
        }
        #expect(waitUntil { fixture.server.server.connectionCount == 1 })
        #expect(try bystander.read(at: 0, length: 512).count == 512)
    }
}

/// A thread started now and joined later, rethrowing what its body threw.
final class StartedThread: @unchecked Sendable {
    private var thread = pthread_t()
    fileprivate var failure: (any Error)?
    fileprivate let body: () throws -> Void

    fileprivate init(_ body: @escaping () throws -> Void) { self.body = body }

    func join() throws {
        pthread_join(thread, nil)
        if let failure { throw failure }
    }

    fileprivate func start() {
        pthread_create(&thread, nil, { raw in
            let started = Unmanaged<StartedThread>.fromOpaque(raw!).takeRetainedValue()
            do { try started.body() } catch { started.failure = error }
            return nil
        }, Unmanaged.passRetained(self).toOpaque())
    }
}

func concurrentlyStart(_ body: @escaping () throws -> Void) throws -> StartedThread {
    let thread = StartedThread(body)
    thread.start()
    return thread
}
