import BlockDevice
import Glibc
import Testing

/// Which requests a file device runs on the caller's thread
/// (FileBlockDevice+Inline.swift): those that cannot wait for a disk.
@Suite("FileBlockDevice inline")
struct FileInlineTests {
    @Test func memoryFileSystemRunsEverythingInline() throws {
        try #require(fileSystemType(of: "/dev/shm") == "tmpfs", "/dev/shm is not tmpfs here")
        let file = TemporaryFile(size: 1 << 20, directory: "/dev/shm")
        let device = try FileBlockDevice(path: file.path, threaded: false)
        let data = pattern(8192, seed: 4)
        let wrote = Outcomes()
        let written = data.withUnsafeBytes { device.startWrite(at: 4096, from: $0, fua: false, completion: wrote.completion) }
        #expect(written && wrote.value == ["done"])
        #expect(file.peek(8192, at: 4096) == data)
        let read = Outcomes()
        var buffer = [UInt8](repeating: 0, count: 8192)
        let started = buffer.withUnsafeMutableBytes { device.startRead(at: 4096, into: $0, completion: read.completion) }
        #expect(started && read.value == ["done"] && buffer == data)
        // With no disk, FUA and FLUSH have nothing to wait for: inline too.
        #expect(device.flushesAtOnce)
        let fua = data.withUnsafeBytes { device.startWrite(at: 0, from: $0, fua: true, completion: wrote.completion) }
        #expect(fua && wrote.value == ["done", "done"])
        #expect(file.peek(8192, at: 0) == data)
        // Out of range: started, and failed the way the synchronous call fails.
        let failed = Outcomes()
        var beyond = [UInt8](repeating: 0, count: 4096)
        #expect(beyond.withUnsafeMutableBytes { device.startRead(at: 1 << 20, into: $0, completion: failed.completion) })
        #expect(failed.value == ["failed"])
    }

    @Test func threadedAndDirectNeverRunInline() throws {
        let file = TemporaryFile(size: 1 << 20, directory: "/dev/shm")
        expectNeverInline(try FileBlockDevice(path: file.path))
        // With O_DIRECT every request goes to the disk, though the kernel
        // takes RWF_NOWAIT on it (ext4 does, for a read of allocated blocks).
        let diskFile = TemporaryFile(size: 1 << 20, directory: "/var/tmp")
        diskFile.poke(pattern(4096), at: 0)
        expectNeverInline(try FileBlockDevice(path: diskFile.path, direct: true, threaded: false))
    }

    /// On a disk file system a READ runs inline only from the page cache
    /// (RWF_NOWAIT): after the file's pages are dropped it must go to a
    /// worker, and whatever runs inline reads the right bytes.
    @Test func diskFileReadsInlineOnlyFromThePageCache() throws {
        let directory = "/var/tmp"
        let type = try #require(fileSystemType(of: directory))
        try #require(type != "tmpfs" && type != "ramfs", "\(directory) is \(type), not a disk file system")
        let file = TemporaryFile(size: 1 << 20, directory: directory)
        let data = pattern(65536, seed: 8)
        file.poke(data, at: 0)
        let device = try FileBlockDevice(path: file.path, threaded: false)
        // FUA and FLUSH wait for the disk: never inline.
        #expect(!device.flushesAtOnce)
        let fua = Outcomes()
        #expect(!data.withUnsafeBytes { device.startWrite(at: 0, from: $0, fua: true, completion: fua.completion) })
        #expect(fua.value.isEmpty)
        #expect(try device.read(at: 0, count: 65536) == data)
        let cached = Outcomes()
        var buffer = [UInt8](repeating: 0, count: 65536)
        if buffer.withUnsafeMutableBytes({ device.startRead(at: 0, into: $0, completion: cached.completion) }) {
            #expect(cached.value == ["done"] && buffer == data)
        }
        dropPageCache(file.path)
        let evicted = Outcomes()
        #expect(!buffer.withUnsafeMutableBytes { device.startRead(at: 0, into: $0, completion: evicted.completion) })
        #expect(evicted.value.isEmpty)
    }
}

/// Expects `device` to leave a READ and a WRITE of one aligned block to
/// the synchronous path.
private func expectNeverInline(_ device: FileBlockDevice, sourceLocation: SourceLocation = #_sourceLocation) {
    let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: 4096, alignment: 4096)
    defer { buffer.deallocate() }
    buffer.initializeMemory(as: UInt8.self, repeating: 0)
    let outcomes = Outcomes()
    #expect(!device.startRead(at: 0, into: buffer, completion: outcomes.completion), sourceLocation: sourceLocation)
    #expect(!device.startWrite(at: 0, from: UnsafeRawBufferPointer(buffer), fua: false, completion: outcomes.completion), sourceLocation: sourceLocation)
    #expect(outcomes.value.isEmpty, sourceLocation: sourceLocation)
}

/// The file system type /proc/mounts gives for the longest mount point
/// containing `path`.
private func fileSystemType(of path: String) -> String? {
    guard let file = fopen("/proc/mounts", "r") else { return nil }
    defer { fclose(file) }
    var best: (point: String, type: String)?
    var line: UnsafeMutablePointer<CChar>?
    var capacity = 0
    defer { free(line) }
    while getline(&line, &capacity, file) > 0, let line {
        let fields = String(cString: line).split(separator: " ")
        guard fields.count >= 3 else { continue }
        let point = String(fields[1])
        let inside = path == point || path.hasPrefix(point == "/" ? "/" : point + "/")
        if inside, point.count >= (best?.point.count ?? -1) { best = (point, String(fields[2])) }
    }
    return best?.type
}

/// Drops the file's clean pages from the page cache.
private func dropPageCache(_ path: String) {
    let fd = open(path, O_RDONLY)
    precondition(fd >= 0)
    defer { close(fd) }
    fsync(fd)
    precondition(posix_fadvise(fd, 0, 0, POSIX_FADV_DONTNEED) == 0)
}
