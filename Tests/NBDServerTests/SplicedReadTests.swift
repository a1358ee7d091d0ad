import BlockDevice
import CSystemShims
import Glibc
import NBDProtocol
import NBDServer
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
        guard bulkhead_filesystem_type(fd) != 0x0102_1994 else { return }  // /tmp is tmpfs here
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
        let fixture = try TestServer(exports: [NBDExport(name: "disk", device: device)])
        let client = try RawClient(fixture.address, export: "disk", structured: structured)
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

    @Test func aSplicedReadPastWhatTheFileHoldsEndsTheConnection() throws {
        let memory = try TemporaryDirectory("splice", under: "/dev/shm")
        let (device, _) = try Self.memoryFileDevice(memory, size: 1 << 20)
        let fixture = try TestServer(exports: [NBDExport(name: "disk", device: device)])
        let client = try RawClient(fixture.address, export: "disk")
        #expect(try client.read(at: 0, length: 65536).count == 65536)
        // The file shrinks under the server: the header promised bytes
        // that cannot follow, so the connection must end rather than let
        // the next reply be taken for them.
        #expect(truncate(memory.file("disk.img"), 65536) == 0)
        _ = try client.request(.read, offset: 512 << 10, length: 65536)
        #expect(client.isClosedByServer())
    }
}
