import BlockDevice
import Glibc
import Testing

@Suite("FileBlockDevice")
struct FileBlockDeviceTests {
    @Test func readsBackWhatItWrites() throws {
        let file = TemporaryFile(size: 1 << 20)
        let device = try FileBlockDevice(path: file.path)
        #expect(device.size == 1 << 20)
        #expect(!device.isReadOnly && !device.isBlockDevice && !device.isDirect)
        #expect(device.minimumBlockSize == 1)
        #expect(device.capabilities.isSuperset(of: [.flush, .writeZeroes, .fastZero, .multiConnConsistent, .trim]))
        let data = pattern(10_000)
        try device.write(data, at: 12_345, fua: true)
        #expect(try device.read(at: 12_345, count: 10_000) == data)
        #expect(file.peek(10_000, at: 12_345) == data)
        #expect(try device.read(at: 0, count: 16) == [UInt8](repeating: 0, count: 16))
        // The last byte of the device is reachable.
        try device.write([0x5A], at: (1 << 20) - 1)
        #expect(try device.read(at: (1 << 20) - 1, count: 1) == [0x5A])
        try device.flush()
    }

    @Test func seesWritesMadeThroughOtherHandles() throws {
        let file = TemporaryFile(size: 65536)
        let device = try FileBlockDevice(path: file.path, readOnly: true)
        file.poke(pattern(100, seed: 3), at: 500)
        #expect(try device.read(at: 500, count: 100) == pattern(100, seed: 3))
    }

    @Test func rejectsRangesOutsideTheDevice() throws {
        let file = TemporaryFile(size: 4096)
        let device = try FileBlockDevice(path: file.path)
        #expect(thrownError { _ = try device.read(at: 4000, count: 97) } == .outOfRange(offset: 4000, length: 97, size: 4096))
        #expect(thrownError { try device.write([1], at: 4096) } == .outOfRange(offset: 4096, length: 1, size: 4096))
        #expect(thrownError { _ = try device.read(at: UInt64.max, count: 2) } == .outOfRange(offset: UInt64.max, length: 2, size: 4096))
        #expect(thrownError { try device.trim(at: 1, length: UInt64.max, fua: false) } != nil)
        #expect(thrownError { try device.writeZeroes(at: 4095, length: 2, flags: []) } == .outOfRange(offset: 4095, length: 2, size: 4096))
        // Nothing was written past the end.
        var info = stat()
        stat(file.path, &info)
        #expect(info.st_size == 4096)
    }

    @Test func readOnlyRefusesChanges() throws {
        let file = TemporaryFile(size: 8192)
        file.poke(pattern(8192), at: 0)
        let device = try FileBlockDevice(path: file.path, readOnly: true)
        #expect(device.isReadOnly)
        #expect(device.capabilities.isDisjoint(with: [.flush, .trim, .writeZeroes, .fastZero]))
        #expect(thrownError { try device.write([1, 2, 3], at: 0) } == .readOnly)
        #expect(thrownError { try device.trim(at: 0, length: 4096, fua: false) } == .readOnly)
        #expect(thrownError { try device.writeZeroes(at: 0, length: 4096, flags: []) } == .readOnly)
        #expect(try device.read(at: 0, count: 8192) == pattern(8192))
        #expect(file.peek(8192, at: 0) == pattern(8192))
    }

    @Test func reportsWhyOpeningFails() {
        do {
            _ = try FileBlockDevice(path: "/nonexistent/bulkhead.img")
            Issue.record("opened a missing file")
        } catch {
            #expect(error == .io(operation: "open /nonexistent/bulkhead.img", errno: ENOENT))
            #expect(error.description.contains("No such file or directory"))
        }
        #expect(throws: BlockDeviceError.self) { _ = try FileBlockDevice(path: "/dev/null") }
        #expect(throws: BlockDeviceError.self) { _ = try FileBlockDevice(path: "/tmp") }
    }

    @Test func trimPunchesHoles() throws {
        let file = TemporaryFile(size: 4 << 20)
        file.poke(pattern(4 << 20), at: 0)
        let before = file.allocatedBlocks
        #expect(before >= (4 << 20) / 512)
        let device = try FileBlockDevice(path: file.path)
        try device.trim(at: 1 << 20, length: 2 << 20, fua: true)
        #expect(file.allocatedBlocks <= before - (2 << 20) / 512)
        #expect(try device.read(at: 1 << 20, count: 2 << 20) == [UInt8](repeating: 0, count: 2 << 20))
        #expect(try device.read(at: 0, count: 1 << 20) == Array(pattern(4 << 20)[0..<(1 << 20)]))
    }

    @Test func writeZeroesPunchesUnlessToldNotTo() throws {
        let file = TemporaryFile(size: 4 << 20)
        file.poke(pattern(4 << 20), at: 0)
        let device = try FileBlockDevice(path: file.path)
        let full = file.allocatedBlocks
        try device.writeZeroes(at: 0, length: 1 << 20, flags: [.fua])
        #expect(try device.read(at: 0, count: 1 << 20) == [UInt8](repeating: 0, count: 1 << 20))
        #expect(file.allocatedBlocks <= full - (1 << 20) / 512)
        let punched = file.allocatedBlocks
        try device.writeZeroes(at: 2 << 20, length: 1 << 20, flags: [.noHole, .fast])
        #expect(try device.read(at: 2 << 20, count: 1 << 20) == [UInt8](repeating: 0, count: 1 << 20))
        // NO_HOLE keeps the blocks allocated.
        #expect(file.allocatedBlocks == punched)
        #expect(file.peek(16, at: (3 << 20)) == Array(pattern(4 << 20)[(3 << 20)..<((3 << 20) + 16)]))
    }

    /// tmpfs punches holes but has no FALLOC_FL_ZERO_RANGE, so zeroing
    /// without holes must either write zeroes or, with `.fast`, refuse.
    @Test func fastZeroFailsWhenOnlyWritingWouldDo() throws {
        let file = TemporaryFile(size: 1 << 20, directory: "/dev/shm")
        file.poke(pattern(1 << 20), at: 0)
        let device = try FileBlockDevice(path: file.path)
        #expect(device.capabilities.contains(.fastZero))
        let error = thrownError { try device.writeZeroes(at: 0, length: 65536, flags: [.noHole, .fast]) }
        guard case .notSupported = error else {
            Issue.record("expected notSupported, got \(String(describing: error))")
            return
        }
        #expect(file.peek(65536, at: 0) == Array(pattern(1 << 20)[0..<65536]))
        try device.writeZeroes(at: 0, length: 65536, flags: [.noHole])
        #expect(file.peek(65536, at: 0) == [UInt8](repeating: 0, count: 65536))
        // Holes are allowed: fast works by punching.
        try device.writeZeroes(at: 65536, length: 65536, flags: [.fast])
        #expect(file.peek(65536, at: 65536) == [UInt8](repeating: 0, count: 65536))
    }

    @Test func directIOBouncesUnalignedBuffers() throws {
        let file = TemporaryFile(size: (2 << 20) + 1000)
        let device = try FileBlockDevice(path: file.path, direct: true)
        #expect(device.isDirect)
        #expect(device.minimumBlockSize == 4096)
        // The partial last block is not part of the device.
        #expect(device.size == 2 << 20)
        let data = pattern(3 * 4096 + 1, seed: 9)
        // Slicing off the first byte makes the source address odd.
        try Array(data[1...]).withUnsafeBytes { raw in
            let unaligned = UnsafeRawBufferPointer(rebasing: raw[0...])
            try device.write(at: 8192, from: unaligned, fua: false)
        }
        var storage = [UInt8](repeating: 0, count: 3 * 4096 + 1)
        try storage.withUnsafeMutableBytes { raw in
            try device.read(at: 8192, into: UnsafeMutableRawBufferPointer(rebasing: raw[1...]))
        }
        #expect(Array(storage[1...]) == Array(data[1...]))
        #expect(file.peek(3 * 4096, at: 8192) == Array(data[1...]))
        let error = thrownError { _ = try device.read(at: 100, count: 4096) }
        guard case .io(_, let code) = error else {
            Issue.record("expected an EINVAL failure, got \(String(describing: error))")
            return
        }
        #expect(code == EINVAL)
        // Large unaligned transfers go through the bounce buffer piece by piece.
        let big = pattern(3 << 19, seed: 4)
        try device.write(big, at: 0)
        #expect(try device.read(at: 0, count: 3 << 19) == big)
        try device.writeZeroes(at: 4096, length: 4096, flags: [.noHole])
        #expect(try device.read(at: 4096, count: 4096) == [UInt8](repeating: 0, count: 4096))
    }

    @Test func servesManyThreadsAtOnce() throws {
        let file = TemporaryFile(size: 64 * 4096)
        let device = try FileBlockDevice(path: file.path)
        try concurrentStripes(device)
    }
}

/// Sixteen threads each write and verify their own 4 KiB stripes.
func concurrentStripes(_ device: any BlockDevice) throws {
    final class Failures: @unchecked Sendable {
        var count = 0
        let lock = UnsafeMutablePointer<pthread_mutex_t>.allocate(capacity: 1)
        init() { pthread_mutex_init(lock, nil) }
        func add() { pthread_mutex_lock(lock); count += 1; pthread_mutex_unlock(lock) }
    }
    let failures = Failures()
    var threads: [pthread_t] = []
    final class Job: @unchecked Sendable {
        let run: () -> Void
        init(_ run: @escaping () -> Void) { self.run = run }
    }
    for worker in 0..<16 {
        let job = Job {
            for round in 0..<20 {
                for stripe in stride(from: worker, to: 64, by: 16) {
                    let data = pattern(4096, seed: worker * 31 + round)
                    do {
                        try device.write(data, at: UInt64(stripe * 4096))
                        if try device.read(at: UInt64(stripe * 4096), count: 4096) != data { failures.add() }
                    } catch {
                        failures.add()
                    }
                }
            }
        }
        var thread = pthread_t()
        let box = Unmanaged.passRetained(job).toOpaque()
        pthread_create(&thread, nil, { raw in
            Unmanaged<Job>.fromOpaque(raw!).takeRetainedValue().run()
            return nil
        }, box)
        threads.append(thread)
    }
    for thread in threads { pthread_join(thread, nil) }
    #expect(failures.count == 0)
}
