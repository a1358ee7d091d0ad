import BlockDevice
import Foundation
import Logging
import NBDClient
import NBDProtocol
import Sockets
import TestSupport
import Testing

extension RemoteBlockDevice.Options {
    /// Short timeouts so failures show quickly in tests.
    static func forTests(retryWindow: Double = 10, requestTimeout: Double = 5) -> Self {
        // Failed reconnect attempts log at info; keep test output readable.
        var logger = Logger(label: "bulkhead.nbd-client.test")
        logger.logLevel = .warning
        return RemoteBlockDevice.Options(
            connection: NBDConnection.Options(handshakeTimeout: 2, requestTimeout: requestTimeout, logger: logger),
            retryWindow: retryWindow, initialBackoff: 0.02, maxBackoff: 0.25)
    }
}

extension RemoteBlockDevice {
    func read(at offset: UInt64, count: Int) throws(BlockDeviceError) -> [UInt8] {
        let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: count, alignment: 16)
        defer { buffer.deallocate() }
        try read(at: offset, into: buffer)
        return Array(buffer)
    }

    func write(at offset: UInt64, bytes: [UInt8], fua: Bool = false) throws(BlockDeviceError) {
        let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: bytes.count, alignment: 16)
        defer { buffer.deallocate() }
        buffer.copyBytes(from: bytes)
        try write(at: offset, from: UnsafeRawBufferPointer(buffer), fua: fua)
    }

    /// Writes `data` at `offset` and reads it back; what went wrong, if
    /// anything, goes to `errors` after `label`.
    func writeAndReadBack(_ data: [UInt8], at offset: UInt64, label: String, errors: Locked<[String]>) {
        do throws(BlockDeviceError) {
            try write(at: offset, bytes: data)
            if try read(at: offset, count: data.count) != data {
                errors.withLock { $0.append("\(label): data mismatch") }
            }
        } catch {
            errors.withLock { $0.append("\(label): \(error)") }
        }
    }
}

/// RemoteBlockDevice against nbdkit: properties, splitting, error mapping.
@Suite("RemoteBlockDevice against nbdkit", .enabled(if: NBDKit.shouldRun))
struct RemoteBlockDeviceTests {
    let directory: TemporaryDirectory

    init() throws {
        directory = try TemporaryDirectory()
    }

    func start(_ arguments: [String] = ["memory", "64M"]) throws -> NBDKit {
        try NBDKit(socketPath: directory.file("sock"), arguments)
    }

    @Test func propertiesComeFromTheNegotiatedExport() throws {
        let server = try start()
        let device = try RemoteBlockDevice(connectingTo: server.address, options: .forTests())
        #expect(device.size == 64 << 20)
        #expect(!device.isReadOnly)
        #expect(device.minimumBlockSize == 1)
        #expect(device.chunkSize == NBDLimits.maxPayload)
        #expect(device.capabilities.isSuperset(of: [.flush, .trim, .writeZeroes, .fastZero, .multiConnConsistent]))
        #expect(!device.capabilities.contains(.rotational))
    }

    @Test func requestsLargerThanTheMaximumPayloadAreSplit() throws {
        // nbdkit rejects any request over 64 KiB or not 512-aligned.
        let server = try start([
            "--filter=blocksize-policy", "memory", "4M", "blocksize-minimum=512", "blocksize-preferred=4096",
            "blocksize-maximum=65536", "blocksize-error-policy=error",
        ])
        let device = try RemoteBlockDevice(connectingTo: server.address, options: .forTests())
        #expect(device.minimumBlockSize == 512)
        #expect(device.preferredBlockSize == 4096)
        #expect(device.chunkSize == 65536)
        let data = randomBytes((1 << 20) + 1536)
        try device.write(at: 512, bytes: data, fua: true)
        #expect(try device.read(at: 512, count: data.count) == data)
        // Cross-check through a plain connection, 64 KiB at a time.
        let connection = try NBDConnection.connect(to: server.address)
        var readBack: [UInt8] = []
        for offset in stride(from: 0, to: data.count, by: 65536) {
            readBack += try connection.read(at: 512 + UInt64(offset), length: min(65536, data.count - offset))
        }
        #expect(readBack == data)
    }

    @Test func readsBeyondTheDefaultPayloadLimitAreSplit() throws {
        let server = try start()
        let device = try RemoteBlockDevice(connectingTo: server.address, options: .forTests(requestTimeout: 30))
        let data = randomBytes(40 << 20)
        try device.write(at: 1000, bytes: data)
        #expect(try device.read(at: 1000, count: data.count) == data)
    }

    @Test func batchesCheckEachOperationAndPipelineTheRest() throws {
        let server = try start()
        let device = try RemoteBlockDevice(connectingTo: server.address, options: .forTests())
        let blocks = (0..<64).map { _ in randomBytes(8192) }
        let writes = blocks.withUnsafeBufferPointers { buffers in
            device.perform(
                buffers.enumerated().map { .write(offset: UInt64($0.offset) * 100_000, from: $0.element, fua: false) }
                    + [.write(offset: device.size - 1, from: buffers[0], fua: false), .flush])
        }
        #expect(writes.count == 66)
        #expect(writes[0..<64].allSatisfy { (try? $0.get()) != nil })
        guard case .failure(.invalidRequest) = writes[64] else {
            Issue.record("a write past the end must be refused locally, got \(writes[64])")
            return
        }
        #expect((try? writes[65].get()) != nil)
        var readBack = blocks.map { [UInt8](repeating: 0, count: $0.count) }
        let reads = readBack.withUnsafeMutableBufferPointers { buffers in
            device.perform(buffers.enumerated().map { .read(offset: UInt64($0.offset) * 100_000, into: $0.element) })
        }
        #expect(reads.allSatisfy { (try? $0.get()) != nil })
        #expect(readBack == blocks)
    }

    @Test func rangesOutsideTheDeviceAreRejectedLocally() throws {
        let server = try start()
        let device = try RemoteBlockDevice(connectingTo: server.address, options: .forTests())
        #expect(throws: BlockDeviceError.outOfRange(offset: device.size - 512, length: 1024, size: device.size)) {
            _ = try device.read(at: device.size - 512, count: 1024)
        }
        #expect(throws: BlockDeviceError.outOfRange(offset: UInt64.max, length: 2, size: device.size)) {
            try device.writeZeroes(at: UInt64.max, length: 2, flags: [])
        }
        #expect(try device.read(at: 0, count: 0).isEmpty)
    }

    @Test func zeroingAndTrimmingLargeRangesAreSplit() throws {
        let server = try start(["memory", "3G"])
        let device = try RemoteBlockDevice(connectingTo: server.address, options: .forTests(requestTimeout: 30))
        let data = randomBytes(8192)
        try device.write(at: (5 << 29) + 100, bytes: data)
        #expect(try device.read(at: (5 << 29) + 100, count: 8192) == data)
        try device.writeZeroes(at: 0, length: device.size, flags: [.fua])
        #expect(try device.read(at: (5 << 29) + 100, count: 8192) == [UInt8](repeating: 0, count: 8192))
        try device.trim(at: 0, length: device.size, fua: false)
        try device.flush()
    }

    @Test func readOnlyExportsRefuseWritesLocally() throws {
        let server = try start(["-r", "memory", "1M"])
        let device = try RemoteBlockDevice(connectingTo: server.address, options: .forTests())
        #expect(device.isReadOnly)
        #expect(throws: BlockDeviceError.readOnly) { try device.write(at: 0, bytes: [1]) }
        #expect(throws: BlockDeviceError.readOnly) { try device.trim(at: 0, length: 512, fua: false) }
        #expect(throws: BlockDeviceError.readOnly) { try device.writeZeroes(at: 0, length: 512, flags: []) }
        #expect(try device.read(at: 0, count: 512) == [UInt8](repeating: 0, count: 512))
    }

    @Test func serverErrorsMapToBlockDeviceErrors() throws {
        let server = try start([
            "--filter=error", "memory", "1M", "error-pread=EIO", "error-pread-rate=100%", "error-pwrite=ENOSPC",
            "error-pwrite-rate=100%", "error-trim=EPERM", "error-trim-rate=100%",
        ])
        let device = try RemoteBlockDevice(connectingTo: server.address, options: .forTests())
        do {
            _ = try device.read(at: 0, count: 512)
            Issue.record("read succeeded despite the error filter")
        } catch {
            guard case .io(_, let code) = error else {
                Issue.record("expected an I/O error, got \(error)")
                return
            }
            #expect(code == EIO)
        }
        #expect(throws: BlockDeviceError.noSpace) { try device.write(at: 0, bytes: [1, 2, 3]) }
        do {
            try device.trim(at: 0, length: 4096, fua: false)
            Issue.record("trim succeeded despite the error filter")
        } catch {
            guard case .io(_, let code) = error else {
                Issue.record("expected EPERM as an I/O error on a writable device, got \(error)")
                return
            }
            #expect(code == EPERM)
        }
    }

    @Test func commandsTheServerLacksAreNotSupported() throws {
        let server = try start(["--filter=nozero", "memory", "1M", "zeromode=none"])
        let device = try RemoteBlockDevice(connectingTo: server.address, options: .forTests())
        #expect(!device.capabilities.contains(.writeZeroes))
        #expect(throws: BlockDeviceError.self) { try device.writeZeroes(at: 0, length: 512, flags: []) }
        do {
            try device.writeZeroes(at: 0, length: 512, flags: [])
        } catch {
            guard case .notSupported = error else {
                Issue.record("expected notSupported, got \(error)")
                return
            }
        }
    }

    @Test func shutdownErrorsMakeTheDeviceReconnectAndRetry() throws {
        // While the flag file exists every read fails with NBD_ESHUTDOWN.
        let flag = directory.file("shutting-down")
        #expect(FileManager.default.createFile(atPath: flag, contents: Data()))
        let server = try start([
            "--filter=error", "memory", "1M", "error-pread=ESHUTDOWN", "error-pread-rate=100%", "error-pread-file=\(flag)",
        ])
        let device = try RemoteBlockDevice(connectingTo: server.address, options: .forTests())
        try device.write(at: 0, bytes: [9, 8, 7])
        let start = Date()
        let reader = Background { () -> [UInt8]? in try? device.read(at: 0, count: 3) }
        Thread.sleep(forTimeInterval: 0.5)
        try FileManager.default.removeItem(atPath: flag)
        #expect(reader.wait(timeout: 10) == .some([9, 8, 7]))
        #expect(Date().timeIntervalSince(start) >= 0.5)
    }

    @Test func closingTheDeviceFailsLaterRequests() throws {
        let server = try start()
        let device = try RemoteBlockDevice(connectingTo: server.address, options: .forTests())
        device.close()
        let result = device.perform([.flush])[0]
        #expect(throws: NBDClientError.closed) { try result.get() }
        #expect(throws: BlockDeviceError.self) { try device.flush() }
    }
}
