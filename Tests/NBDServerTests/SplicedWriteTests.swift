import BlockDevice
import Glibc
import NBDProtocol
import NBDServer
import CSystemShims
import Sockets
import Synchronization
import Testing
import TestSupport

/// Large WRITEs to a file on a memory file system go from the socket into
/// the file with splice(2) (`SplicingBlockDevice.splicedWriteRange`,
/// `SplicePipe`): the file must hold exactly each payload, the stream must
/// stay in step around them, and a file that refuses one must be answered
/// with an error while the connection goes on.
@Suite struct SplicedWriteTests {
    @Test func onlyWritableFilesOnAMemoryFileSystemTakeThem() throws {
        let memory = try TemporaryDirectory("splice", under: "/dev/shm")
        let (device, _) = try SplicedReadTests.memoryFileDevice(memory, size: 1 << 20)
        #expect(device.splicesWrites)
        #expect(device.splicedWriteRange(at: 8192, count: 65536)?.offset == 8192)
        let readOnly = try FileBlockDevice(path: memory.file("disk.img"), readOnly: true, threaded: false)
        #expect(!readOnly.splicesWrites && readOnly.splicedWriteRange(at: 0, count: 65536) == nil)
        // Worker threads only: writes stay on them.
        let threaded = try FileBlockDevice(path: memory.file("disk.img"), threaded: true)
        #expect(!threaded.splicesWrites)
        // A disk file system: a buffered write may wait for writeback.
        let disk = try TemporaryDirectory("splice")
        let onDisk = try FileBlockDevice(path: disk.file("disk.img", size: 1 << 20), threaded: false)
        let fd = open(disk.file("disk.img"), O_RDONLY)
        defer { close(fd) }
        if bulkhead_filesystem_type(fd) != 0x0102_1994 {
            #expect(!onDisk.splicesWrites)
        }
    }

    @Test(arguments: [false, true])
    func largeWritesLandWholeAmongSmallRequests(structured: Bool) throws {
        let memory = try TemporaryDirectory("splice", under: "/dev/shm")
        let size = 16 << 20
        let (device, before) = try SplicedReadTests.memoryFileDevice(memory, size: size)
        let (fixture, client) = try serveDisk(device, structured: structured)
        // Pipelined, below and above the threshold, more bytes than the
        // socket buffers hold, with READs and a FLUSH between them.
        let lengths = [4096, 1 << 20, 512, 65536 + 512, 3 << 20, 200_192, 6 << 20, 16384, 1 << 20]
        var expected = before
        var batch: [UInt8] = []
        var cookies: Set<UInt64> = []
        var offset = 0
        for (index, length) in lengths.enumerated() {
            let payload = pattern(length, seed: 50 + index)
            let write = client.encode(.write, offset: UInt64(offset), length: UInt32(length), payload: payload)
            expected.replaceSubrange(offset..<(offset + length), with: payload)
            let read = client.encode(.read, offset: UInt64(size - 4096), length: 4096)
            let flush = client.encode(.flush)
            batch += write.bytes + read.bytes + flush.bytes
            cookies.formUnion([write.cookie, read.cookie, flush.cookie])
            offset += length + 4096
        }
        try client.send(batch)
        for _ in 0..<cookies.count {
            let completion = try client.nextCompletion()
            #expect(completion.error == nil, "\(completion.message)")
            #expect(cookies.remove(completion.cookie) != nil)
        }
        #expect(cookies.isEmpty)
        // What the client reads back and what the file holds.
        for start in stride(from: 0, to: offset, by: 1 << 20) {
            let length = min(1 << 20, offset - start)
            #expect(try client.read(at: UInt64(start), length: UInt32(length)) == Array(expected[start..<(start + length)]))
        }
        var file = [UInt8](repeating: 0, count: size)
        let fd = open(memory.file("disk.img"), O_RDONLY)
        defer { close(fd) }
        #expect(file.withUnsafeMutableBytes { pread(fd, $0.baseAddress, size, 0) } == size)
        #expect(file == expected)
    }

    @Test func payloadsReallyGoThroughThePipeAndAFailingFileLeavesTheStreamInStep() throws {
        let memory = try TemporaryDirectory("splice", under: "/dev/shm")
        let path = memory.file("spy.img", size: 4 << 20)
        let device = try SplicingFile(path: path, size: 4 << 20)
        let (fixture, client) = try serveDisk(device)
        let payload = pattern(2 << 20, seed: 7)
        try client.write(payload, at: 1 << 20)
        // Only what the server had read with the header went through
        // `write`; the file holds the whole payload.
        #expect(device.bytesWritten < payload.count)
        var file = [UInt8](repeating: 0, count: payload.count)
        #expect(file.withUnsafeMutableBytes { pread(device.file, $0.baseAddress, $0.count, 1 << 20) } == payload.count)
        #expect(file == payload)
        // Spliced into a descriptor open only for reading: an error reply,
        // the payload still taken off the stream, so the next request is
        // read as one.
        device.refuseSplices = true
        let failed = try client.roundTrip(.write, offset: 0, length: UInt32(payload.count), payload: pattern(payload.count, seed: 8))
        #expect(failed.error == .ioError)
        #expect(try client.read(at: 1 << 20, length: 65536) == Array(payload[0..<65536]))
    }
}

/// A file device whose `write` counts the bytes it is given, so a test can
/// tell spliced payload bytes from written ones; with `refuseSplices`,
/// splices go to a descriptor open only for reading and fail.
final class SplicingFile: SplicingBlockDevice, @unchecked Sendable {
    let file: Int32
    let readOnlyFile: Int32
    let size: UInt64
    private let counted = Mutex<(written: Int, refuse: Bool)>((0, false))

    init(path: String, size: UInt64) throws {
        file = open(path, O_RDWR | O_CLOEXEC)
        readOnlyFile = open(path, O_RDONLY | O_CLOEXEC)
        guard file >= 0, readOnlyFile >= 0 else { throw BlockDeviceError.io(operation: "open \(path)", errno: errno) }
        self.size = size
    }

    deinit {
        close(file)
        close(readOnlyFile)
    }

    var bytesWritten: Int { counted.withLock { $0.written } }
    var refuseSplices: Bool {
        get { counted.withLock { $0.refuse } }
        set { counted.withLock { $0.refuse = newValue } }
    }

    var isReadOnly: Bool { false }
    var capabilities: BlockDeviceCapabilities { [] }
    var minimumBlockSize: UInt32 { 1 }

    func read(at offset: UInt64, into buffer: UnsafeMutableRawBufferPointer) throws(BlockDeviceError) {
        guard pread(file, buffer.baseAddress, buffer.count, off_t(offset)) == buffer.count else {
            throw .io(operation: "pread", errno: EIO)
        }
    }

    func write(at offset: UInt64, from buffer: UnsafeRawBufferPointer, fua: Bool) throws(BlockDeviceError) {
        counted.withLock { $0.written += buffer.count }
        guard pwrite(file, buffer.baseAddress, buffer.count, off_t(offset)) == buffer.count else {
            throw .io(operation: "pwrite", errno: EIO)
        }
    }

    func flush() throws(BlockDeviceError) {}
    func trim(at offset: UInt64, length: UInt64, fua: Bool) throws(BlockDeviceError) {}
    func writeZeroes(at offset: UInt64, length: UInt64, flags: ZeroFlags) throws(BlockDeviceError) {}

    func splicedRange(at offset: UInt64, count: Int) -> FileRange? { nil }

    var splicesWrites: Bool { true }

    func splicedWriteRange(at offset: UInt64, count: Int) -> FileRange? {
        FileRange(descriptor: refuseSplices ? readOnlyFile : file, offset: Int64(offset), count: count, owner: self)
    }
}
