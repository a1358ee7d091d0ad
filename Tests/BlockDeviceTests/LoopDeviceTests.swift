import BlockDevice
import Glibc
import Testing

/// Runs a command, returning its exit status and standard output.
func runCommand(_ arguments: [String]) -> (status: Int32, output: String) {
    let outputFile = TemporaryFile(size: 0)
    var actions = posix_spawn_file_actions_t()
    posix_spawn_file_actions_init(&actions)
    defer { posix_spawn_file_actions_destroy(&actions) }
    posix_spawn_file_actions_addopen(&actions, 1, outputFile.path, O_WRONLY | O_TRUNC, 0)
    posix_spawn_file_actions_addopen(&actions, 2, "/dev/null", O_WRONLY, 0)
    let argv = arguments.map { strdup($0) } + [nil]
    defer { argv.forEach { free($0) } }
    var pid = pid_t()
    guard posix_spawnp(&pid, arguments[0], &actions, nil, argv, environ) == 0 else { return (127, "") }
    var status: Int32 = 0
    while waitpid(pid, &status, 0) < 0 && errno == EINTR {}
    var info = stat()
    stat(outputFile.path, &info)
    let output = String(decoding: outputFile.peek(Int(info.st_size), at: 0), as: UTF8.self)
    return (status & 0x7f == 0 ? (status >> 8) & 0xff : 128 + (status & 0x7f), output)
}

/// A loop device over a temporary file, detached on deinit.
final class LoopDevice {
    let backing: TemporaryFile
    let path: String

    init?(size: Int) {
        backing = TemporaryFile(size: size)
        let result = runCommand(["losetup", "--find", "--show", backing.path])
        guard result.status == 0 else { return nil }
        path = String(result.output.filter { !$0.isWhitespace })
    }

    deinit { _ = runCommand(["losetup", "--detach", path]) }
}

/// The block-device paths of FileBlockDevice (BLKGETSIZE64, BLKSSZGET,
/// BLKDISCARD, BLKZEROOUT, fallocate on a device) need a real block device:
/// a loop device, which takes root.
@Suite("FileBlockDevice on a block device")
struct LoopDeviceTests {
    static var available: Bool {
        getuid() == 0 && access("/dev/loop-control", F_OK) == 0
    }

    func loopDevice(size: Int) -> LoopDevice? {
        guard Self.available else { return nil }
        let loop = LoopDevice(size: size)
        if loop == nil, getenv("CI") != nil { Issue.record("losetup failed although running as root") }
        return loop
    }

    @Test func servesALoopDevice() throws {
        guard let loop = loopDevice(size: 8 << 20) else { return }
        let device = try FileBlockDevice(path: loop.path)
        #expect(device.isBlockDevice)
        #expect(device.size == 8 << 20)
        #expect(device.minimumBlockSize == 512)
        #expect(device.capabilities.isSuperset(of: [.flush, .trim, .writeZeroes, .fastZero, .multiConnConsistent]))

        let data = pattern(1 << 20, seed: 11)
        try device.write(data, at: 1 << 20, fua: true)
        #expect(try device.read(at: 1 << 20, count: 1 << 20) == data)
        #expect(loop.backing.peek(4096, at: 1 << 20) == Array(data[0..<4096]))

        // BLKDISCARD on a loop device punches a hole in the backing file.
        let before = loop.backing.allocatedBlocks
        try device.trim(at: 1 << 20, length: 512 << 10, fua: true)
        #expect(loop.backing.allocatedBlocks < before)

        try device.writeZeroes(at: (3 << 19), length: 4096, flags: [.noHole])
        #expect(try device.read(at: 3 << 19, count: 4096) == [UInt8](repeating: 0, count: 4096))
        try device.writeZeroes(at: (3 << 19) + 8192, length: 4096, flags: [.fast])
        #expect(try device.read(at: (3 << 19) + 8192, count: 4096) == [UInt8](repeating: 0, count: 4096))
        // Zeroing that keeps the range allocated may mean writing on a block device.
        guard case .notSupported = thrownError({ try device.writeZeroes(at: 0, length: 4096, flags: [.noHole, .fast]) })
        else {
            Issue.record("NO_HOLE with FAST_ZERO should be refused on a block device")
            return
        }
        #expect(thrownError { _ = try device.read(at: 8 << 20, count: 512) } == .outOfRange(offset: 8 << 20, length: 512, size: 8 << 20))
    }

    @Test func directIOOnALoopDevice() throws {
        guard let loop = loopDevice(size: 4 << 20) else { return }
        let device = try FileBlockDevice(path: loop.path, direct: true)
        #expect(device.minimumBlockSize == 512)
        let data = pattern(4096 + 1, seed: 2)
        try Array(data[1...]).withUnsafeBytes { try device.write(at: 512, from: $0, fua: false) }
        #expect(try device.read(at: 512, count: 4096) == Array(data[1...]))
        let readOnly = try FileBlockDevice(path: loop.path, readOnly: true)
        #expect(readOnly.capabilities.isDisjoint(with: [.trim, .writeZeroes, .flush]))
        #expect(thrownError { try readOnly.write([1], at: 0) } == .readOnly)
    }
}
