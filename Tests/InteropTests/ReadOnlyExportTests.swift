import Foundation
import Testing

/// A `:ro` export must refuse every write on the wire (NBD_EPERM), not only advertise NBD_FLAG_READ_ONLY.
@Suite("read-only export") struct ReadOnlyExportTests {
    @Test("a read-only export refuses writes from real clients and keeps its data")
    func refusesWrites() throws {
        let scratch = try Scratch()
        defer { scratch.remove() }
        let original = try randomBytes(4 * mebibyte)
        let scratchDisk = Export(name: "scratch", path: scratch.file("scratch.img"))
        try makeSparseFile(scratchDisk.path, size: 4 * mebibyte)
        let gold = Export(name: "gold", path: scratch.file("gold.img"), readOnly: true)
        try writeFile(gold.path, original)
        let server = try StorageServer(exports: [scratchDisk, gold], in: scratch)
        defer { server.stop() }

        let qemu = try run(["qemu-io", "-f", "raw", "-c", "write -P 0x11 0 64k", server.uri("gold")])
        #expect(qemu.status != 0, "qemu-io wrote to a read-only export: \(qemu)")

        // libnbd with strict mode off sends the commands although the export is
        // flagged read-only, so the server itself has to refuse them.
        let script = """
            import errno
            print("read-only flag:", h.is_read_only())
            h.set_strict_mode(0)
            for name, request in [("write", lambda: h.pwrite(b"\\x11" * 65536, 0)),
                                  ("trim", lambda: h.trim(65536, 0)),
                                  ("zero", lambda: h.zero(65536, 65536))]:
                try:
                    request()
                    print(name, "ACCEPTED")
                except nbd.Error as e:
                    print(name, "REFUSED", e.errno, e.string)
            """
        let nbdsh = try run(try Tools.nbdsh() + ["-u", server.uri("gold"), "-c", script])
        server.expectSuccess(nbdsh)
        #expect(nbdsh.stdout.contains("read-only flag: True"), "\(nbdsh)")
        #expect(nbdsh.stdout.contains("write REFUSED EPERM"), "\(nbdsh)")
        #expect(nbdsh.stdout.contains("trim REFUSED"), "\(nbdsh)")
        #expect(nbdsh.stdout.contains("zero REFUSED"), "\(nbdsh)")
        #expect(!nbdsh.stdout.contains("ACCEPTED"), "\(nbdsh)")

        let compare = try run(["qemu-img", "compare", "-f", "raw", "-F", "raw", gold.path, server.uri("gold")])
        server.expectSuccess(compare)
        #expect(firstDifference(try readFile(gold.path), original) == nil, "the read-only backing file changed")

        // The writable export next to it still takes writes.
        server.expectSuccess(try run(["qemu-io", "-f", "raw", "-c", "write -P 0x22 0 64k", "-c", "read -P 0x22 0 64k",
                                      server.uri("scratch")]))
    }
}
