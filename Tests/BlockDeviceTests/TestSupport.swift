import BlockDevice
import Glibc
import Testing

/// A temporary file of a given size, removed on deinit.
final class TemporaryFile {
    let path: String

    init(size: Int, directory: String = "/tmp") {
        var template = Array("\(directory)/bulkhead-bd-XXXXXX".utf8CString)
        let fd = template.withUnsafeMutableBufferPointer { mkstemp($0.baseAddress!) }
        precondition(fd >= 0, "mkstemp in \(directory) failed: errno \(errno)")
        precondition(ftruncate(fd, off_t(size)) == 0)
        close(fd)
        path = String(decoding: template.dropLast().map { UInt8(bitPattern: $0) }, as: UTF8.self)
    }

    deinit { unlink(path) }

    /// 512-byte blocks allocated to the file (st_blocks).
    var allocatedBlocks: Int {
        var info = stat()
        precondition(stat(path, &info) == 0)
        return Int(info.st_blocks)
    }

    /// Writes `bytes` at `offset` behind the device's back, and syncs them.
    func poke(_ bytes: [UInt8], at offset: Int) {
        let fd = open(path, O_RDWR)
        precondition(fd >= 0)
        defer { close(fd) }
        let written = bytes.withUnsafeBytes { pwrite(fd, $0.baseAddress, $0.count, off_t(offset)) }
        precondition(written == bytes.count)
        fsync(fd)
    }

    /// The file's bytes at `offset`, read behind the device's back.
    func peek(_ count: Int, at offset: Int) -> [UInt8] {
        let fd = open(path, O_RDONLY)
        precondition(fd >= 0)
        defer { close(fd) }
        var bytes = [UInt8](repeating: 0xEE, count: count)
        let got = bytes.withUnsafeMutableBytes { pread(fd, $0.baseAddress, $0.count, off_t(offset)) }
        precondition(got == count)
        return bytes
    }
}

/// The error `body` throws, or nil.
func thrownError(_ body: () throws -> Void) -> BlockDeviceError? {
    do {
        try body()
        return nil
    } catch let error as BlockDeviceError {
        return error
    } catch {
        Issue.record("unexpected error type: \(error)")
        return nil
    }
}

/// A recognisable pattern: byte i is (i * 7 + seed) mod 251, never all zero.
func pattern(_ count: Int, seed: Int = 1) -> [UInt8] {
    (0..<count).map { UInt8((($0 * 7) + seed) % 251 + 1 & 0xff) }
}

extension BlockDevice {
    func read(at offset: UInt64, count: Int) throws(BlockDeviceError) -> [UInt8] {
        var bytes = [UInt8](repeating: 0xEE, count: count)
        var failure: BlockDeviceError?
        bytes.withUnsafeMutableBytes { raw in
            do throws(BlockDeviceError) { try read(at: offset, into: raw) } catch { failure = error }
        }
        if let failure { throw failure }
        return bytes
    }

    func write(_ bytes: [UInt8], at offset: UInt64, fua: Bool = false) throws(BlockDeviceError) {
        var failure: BlockDeviceError?
        bytes.withUnsafeBytes { raw in
            do throws(BlockDeviceError) { try write(at: offset, from: raw, fua: fua) } catch { failure = error }
        }
        if let failure { throw failure }
    }
}
