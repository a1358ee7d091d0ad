import Foundation
import Testing

/// qemu-io: single requests of chosen shape, with byte patterns QEMU checks itself.
@Suite("qemu-io") struct QemuIoTests {
    static let size = 16 * mebibyte

    private static func qemuIO(_ server: StorageServer, _ export: String, _ commands: [String]) throws -> CommandResult {
        try run(["qemu-io", "-f", "raw"] + commands.flatMap { ["-c", $0] } + [server.uri(export)])
    }

    @Test("patterns written with qemu-io read back, and land at the right offsets of the backing file")
    func patternsRoundTrip() throws {
        let scratch = try Scratch()
        defer { scratch.remove() }
        let disk = Export(name: "disk", path: scratch.file("disk.img"))
        try writeFile(disk.path, try randomBytes(Self.size))
        let server = try StorageServer(exports: [disk], in: scratch)
        defer { server.stop() }

        let result = try Self.qemuIO(server, "disk", [
            "write -P 0xab 0 1M",
            "read -P 0xab 0 1M",
            "write -P 0xcd 1M 4k",
            "read -P 0xcd 1M 4k",
            "read -P 0xab 0 1M",
            // Unaligned and odd-sized: QEMU sends it as is or read-modify-writes, both must hold.
            "write -P 0x5e 3145829 1001",
            "read -P 0x5e 3145829 1001",
            "write -z 2M 64k",
            "read -P 0 2M 64k",
            // A request as large as QEMU makes them (it splits at the server's maximum).
            "write -P 0x77 8M 8M",
            "read -P 0x77 8M 8M",
            "flush",
        ])
        server.expectSuccess(result)
        #expect(!result.output.contains("Pattern verification failed"), "\(result)")
        #expect(result.stdout.contains("wrote 8388608/8388608 bytes at offset 8388608"), "\(result)")

        let stored = try readFile(disk.path)
        func expectBytes(_ value: UInt8, at offset: Int, count: Int, sourceLocation: SourceLocation = #_sourceLocation) {
            let slice = stored[offset..<(offset + count)]
            #expect(slice.allSatisfy { $0 == value }, "backing file bytes \(offset)..<\(offset + count) are not all \(value)",
                    sourceLocation: sourceLocation)
        }
        expectBytes(0xab, at: 0, count: mebibyte)
        expectBytes(0xcd, at: mebibyte, count: 4096)
        expectBytes(0x00, at: 2 * mebibyte, count: 65536)
        expectBytes(0x5e, at: 3_145_829, count: 1001)
        expectBytes(0x77, at: 8 * mebibyte, count: 8 * mebibyte)
    }

    @Test("qemu-io detects a pattern mismatch, so the checks above can fail")
    func patternMismatchIsDetected() throws {
        let scratch = try Scratch()
        defer { scratch.remove() }
        let disk = Export(name: "disk", path: scratch.file("disk.img"))
        try makeSparseFile(disk.path, size: Self.size)
        let server = try StorageServer(exports: [disk], in: scratch)
        defer { server.stop() }

        let result = try Self.qemuIO(server, "disk", ["write -P 0xab 0 1M", "read -P 0xcd 0 1M"])
        #expect(result.status != 0, "reading 0xcd where 0xab was written must fail: \(result)")
        #expect(result.output.contains("Pattern verification failed"), "\(result)")
    }
}
