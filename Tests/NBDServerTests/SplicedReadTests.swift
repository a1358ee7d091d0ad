import BlockDevice
import CSystemShims
import Glibc
import NBDProtocol
import NBDServer
import Sockets
import Testing
import TestSupport

/// READs of a file on a memory file system go out with sendfile(2)
/// (`SplicingBlockDevice`, `ReplyChannel.sendSpliced`): their header and
/// data must still reach the client whole, in order, between the other
/// replies, under simple and structured replies alike.
@Suite struct SplicedReadTests {
    /// A FileBlockDevice on tmpfs, written with a known pattern.
    static func memoryFileDevice(_ directory: TemporaryDirectory, size: Int) throws -> (FileBlockDevice, [UInt8]) {
        let path = directory.file("disk.img", size: size)
        let contents = pattern(size, seed: 11)
        let fd = open(path, O_WRONLY)
        #expect(contents.withUnsafeBytes { pwrite(fd, $0.baseAddress, size, 0) } == size)
        close(fd)
        return (try FileBlockDevice(path: path, threaded: false), contents)
    }

    @Test func rangesAreOfferedOnlyWhereNothingWaitsForADisk() throws {
        let memory = try TemporaryDirectory("splice", under: "/dev/shm")
        let (device, _) = try Self.memoryFileDevice(memory, size: 1 << 20)
        #expect(device.splicedRange(at: 8192, count: 65536)?.offset == 8192)
        #expect(device.splicedRange(at: 8192, count: 65536)?.count == 65536)
        // Worker threads only: every read stays on the copying path.
        let threaded = try FileBlockDevice(path: memory.file("disk.img"), threaded: true)
        #expect(threaded.splicedRange(at: 0, count: 65536) == nil)
        // On a disk file system, only ranges the page cache holds whole:
        // anything else might wait for the disk part way.
        let disk = try TemporaryDirectory("splice")
        let path = disk.file("disk.img", size: 1 << 20)
        let fd = open(path, O_RDWR)
        defer { close(fd) }
        guard bulkhead_filesystem_type(fd) != 0x0102_1994 else { return }  // skipped where /tmp is itself tmpfs
        let written = pattern(65536, seed: 3)
        #expect(written.withUnsafeBytes { pwrite(fd, $0.baseAddress, $0.count, 0) } == 65536)
        let onDisk = try FileBlockDevice(path: path, threaded: false)
        #expect(onDisk.splicedRange(at: 512 << 10, count: 65536) == nil, "a hole never read is not cached")
        #expect(onDisk.splicedRange(at: 32768, count: 65536) == nil, "half cached")
        if bulkhead_cached_pages(fd, 0, 4096) >= 0 {
            #expect(onDisk.splicedRange(at: 4096, count: 32768)?.count == 32768, "just written, so cached")
        }
    }

    @Test(arguments: [false, true])
    func largeReadsArriveWholeAndInOrderAmongSmallOnes(structured: Bool) throws {
        let memory = try TemporaryDirectory("splice", under: "/dev/shm")
        let size = 8 << 20
        let (device, contents) = try Self.memoryFileDevice(memory, size: size)
        let (fixture, client) = try serveDisk(device, structured: structured)
        // Sizes below and above the splice threshold, pipelined, and more
        // large bytes than a socket buffer holds: later replies queue
        // behind a splice while it blocks.
        let lengths: [Int] = [4096, 1 << 20, 512, 16384, 16383, 3 << 20, 65536, 4096, 1 << 20, 200_000]
        var batch: [UInt8] = []
        var expected: [UInt64: [UInt8]] = [:]
        var offset = 12345
        for length in lengths {
            offset = (offset * 7 + 4096) % (size - length)
            let read = client.encode(.read, offset: UInt64(offset), length: UInt32(length))
            batch += read.bytes
            expected[read.cookie] = Array(contents[offset..<(offset + length)])
        }
        try client.send(batch)
        for _ in lengths {
            let completion = try client.nextCompletion()
            #expect(completion.error == nil)
            let want = expected.removeValue(forKey: completion.cookie)
            #expect(want != nil && completion.data == want, "reply \(completion.cookie): \(completion.data.count) bytes")
        }
        #expect(expected.isEmpty)
        // The connection still serves requests after them.
        #expect(try client.read(at: 4096, length: 65536) == Array(contents[4096..<(4096 + 65536)]))
    }

    @Test func aWritesPayloadSentBeforeReadingRepliesIsStillRead() throws {
        // A READ reply, then a WRITE sent before the client reads any
        // reply, each larger than a socket's send buffer (the kernel grants
        // twice what `unixSendBufferBytes` asks for): a server whose
        // request-reading thread sent a spliced reply itself would block on
        // it while the client blocks sending the payload, until the
        // client's send timed out (`testIOTimeout`) and threw.
        let large = 3 * Int(Socket.unixSendBufferBytes)
        let memory = try TemporaryDirectory("splice", under: "/dev/shm")
        let (device, contents) = try Self.memoryFileDevice(memory, size: 3 * large)
        let (fixture, client) = try serveDisk(device)
        let read = client.encode(.read, offset: 0, length: UInt32(large))
        let payload = pattern(large, seed: 42)
        let write = client.encode(.write, offset: UInt64(2 * large), length: UInt32(payload.count), payload: payload)
        try client.send(read.bytes + write.bytes)
        var answered: Set<UInt64> = []
        for _ in 0..<2 {
            let completion = try client.nextCompletion()
            #expect(completion.error == nil)
            if completion.cookie == read.cookie { #expect(completion.data == Array(contents[0..<large])) }
            answered.insert(completion.cookie)
        }
        #expect(answered == [read.cookie, write.cookie])
        #expect(try client.read(at: UInt64(2 * large), length: 65536) == Array(payload[0..<65536]))
    }

    @Test func aFileShrunkUnderTheServerGetsErrorRepliesNotSplices() throws {
        let memory = try TemporaryDirectory("splice", under: "/dev/shm")
        let (device, contents) = try Self.memoryFileDevice(memory, size: 1 << 20)
        let (fixture, client) = try serveDisk(device)
        #expect(truncate(memory.file("disk.img"), 256 << 10) == 0)
        // Past the new end: no range to splice, so the copying path
        // answers the short read with an error, and the connection stays.
        #expect(device.splicedRange(at: 512 << 10, count: 65536) == nil)
        let past = try client.roundTrip(.read, offset: 512 << 10, length: 65536)
        #expect(past.error != nil)
        #expect(try client.read(at: 0, length: 131_072) == Array(contents[0..<131_072]))
    }

    @Test func repliesReallyComeFromTheSplicedFileAndAShortOneEndsTheConnection() throws {
        // Memory holds one pattern, the file another: what arrives shows
        // which path sent it.
        let memory = try TemporaryDirectory("splice", under: "/dev/shm")
        let path = memory.file("short.img", size: 0)
        let fileBytes = pattern(256 << 10, seed: 99)
        let fd = open(path, O_RDWR)
        defer { close(fd) }
        #expect(fileBytes.withUnsafeBytes { pwrite(fd, $0.baseAddress, $0.count, 0) } == fileBytes.count)
        let device = try SplicingMemory(size: 1 << 20, file: fd)
        let (fixture, client) = try serveDisk(device)
        #expect(try client.read(at: 65536, length: 65536) == Array(fileBytes[65536..<131_072]))
        #expect(try client.read(at: 0, length: 4096) == [UInt8](repeating: 0, count: 4096), "small reads are not spliced")
        // The file ends before the range: the header is already out, so
        // the connection must end rather than let the next reply be taken
        // for the missing bytes.
        _ = try client.request(.read, offset: 512 << 10, length: 65536)
        #expect(client.isClosedByServer())
    }
}

/// Serves `device` as export "disk" and connects a raw client to it; the
/// server lives as long as the fixture returned.
func serveDisk(_ device: any BlockDevice, structured: Bool = true) throws -> (TestServer, RawClient) {
    let fixture = try TestServer(exports: [NBDExport(name: "disk", device: device)])
    return (fixture, try RawClient(fixture.address, export: "disk", structured: structured))
}

/// A memory device whose large READs are spliced from `file` at the same
/// offsets, however short the file is.
final class SplicingMemory: SplicingBlockDevice, @unchecked Sendable {
    let memory: MemoryBlockDevice
    let file: Int32

    init(size: UInt64, file: Int32) throws {
        memory = try MemoryBlockDevice(size: size)
        self.file = file
    }

    var size: UInt64 { memory.size }
    var isReadOnly: Bool { memory.isReadOnly }
    var capabilities: BlockDeviceCapabilities { memory.capabilities }
    var minimumBlockSize: UInt32 { memory.minimumBlockSize }

    func read(at offset: UInt64, into buffer: UnsafeMutableRawBufferPointer) throws(BlockDeviceError) {
        try memory.read(at: offset, into: buffer)
    }

    func write(at offset: UInt64, from buffer: UnsafeRawBufferPointer, fua: Bool) throws(BlockDeviceError) {
        try memory.write(at: offset, from: buffer, fua: fua)
    }

    func flush() throws(BlockDeviceError) { try memory.flush() }

    func trim(at offset: UInt64, length: UInt64, fua: Bool) throws(BlockDeviceError) {
        try memory.trim(at: offset, length: length, fua: fua)
    }

    func writeZeroes(at offset: UInt64, length: UInt64, flags: ZeroFlags) throws(BlockDeviceError) {
        try memory.writeZeroes(at: offset, length: length, flags: flags)
    }

    func splicedRange(at offset: UInt64, count: Int) -> FileRange? {
        FileRange(descriptor: file, offset: Int64(offset), count: count, owner: self)
    }
}
