import Foundation
import Testing

/// fio's NBD engine (libnbd): many requests in flight on two connections at once,
/// every block stamped with a CRC32C that fio checks on read.
@Suite("fio") struct FioTests {
    static let size = 64 * mebibyte
    static let jobs = 2

    /// Two jobs, each on its own connection, each writing its own half of the export.
    private static func fio(_ server: StorageServer, _ extra: [String]) throws -> CommandResult {
        try run([
            "fio", "--name=interop", "--ioengine=nbd", "--uri=" + server.uri("disk"),
            "--rw=randwrite", "--bs=4k", "--iodepth=16",
            "--numjobs=\(jobs)", "--size=\(size / jobs)", "--offset_increment=\(size / jobs)",
            "--verify=crc32c", "--randseed=20260101", "--verify_state_save=0",
        ] + extra, timeout: 180)
    }

    private static func verifyErrors(in output: String) -> [Substring] {
        output.split(separator: "\n").filter { $0.contains("verify:") || $0.contains("verify failed") || $0.contains("bad magic") }
    }

    private static func serve(in scratch: Scratch) throws -> StorageServer {
        let disk = Export(name: "disk", path: scratch.file("disk.img"))
        try makeSparseFile(disk.path, size: size)
        return try StorageServer(exports: [disk], in: scratch)
    }

    @Test("fio random writes with crc32c verify, then a verify-only pass on new connections")
    func randomWritesVerify() throws {
        let scratch = try Scratch()
        defer { scratch.remove() }
        let server = try Self.serve(in: scratch)
        defer { server.stop() }

        let written = try Self.fio(server, ["--do_verify=1"])
        server.expectSuccess(written)
        #expect(Self.verifyErrors(in: written.output).isEmpty, "\(written)")
        #expect(written.stdout.components(separatedBy: "err= 0").count - 1 == Self.jobs, "\(written)")
        #expect(written.stdout.contains("write: IOPS="), "\(written)")
        #expect(written.stdout.contains("read: IOPS="), "the verify phase did not read: \(written)")

        // Same seed and layout: fio recomputes every block it wrote and reads it back.
        let verified = try Self.fio(server, ["--verify_only=1"])
        server.expectSuccess(verified)
        #expect(Self.verifyErrors(in: verified.output).isEmpty, "\(verified)")
        #expect(verified.stdout.contains("read: IOPS="), "\(verified)")
    }

    @Test("fio's verify catches a block changed behind its back, so the check above can fail")
    func verifyCatchesCorruption() throws {
        let scratch = try Scratch()
        defer { scratch.remove() }
        let server = try Self.serve(in: scratch)
        defer { server.stop() }

        server.expectSuccess(try Self.fio(server, ["--do_verify=0"]))
        server.expectSuccess(try run(["qemu-io", "-f", "raw", "-c", "write -P 0x5a 40M 4k", server.uri("disk")]))
        let verified = try Self.fio(server, ["--verify_only=1"])
        #expect(verified.status != 0, "fio must fail on the overwritten block: \(verified)")
        #expect(verified.output.contains("bad magic header 5a5a"), "\(verified)")
    }
}
