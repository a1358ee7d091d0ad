import Foundation
import Testing

/// qemu-img (QEMU's NBD block driver) copying whole images through an export.
@Suite("qemu-img") struct QemuImgTests {
    static let size = 64 * mebibyte

    @Test("qemu-img convert copies an image into an export and back out unchanged")
    func convertInAndOut() throws {
        let scratch = try Scratch()
        defer { scratch.remove() }
        let source = scratch.file("source.raw")
        let original = try randomBytes(Self.size)
        try writeFile(source, original)
        let disk = Export(name: "disk", path: scratch.file("disk.img"))
        try makeSparseFile(disk.path, size: Self.size)
        let server = try StorageServer(exports: [disk], in: scratch)
        defer { server.stop() }
        let uri = server.uri("disk")

        server.expectSuccess(try run(["qemu-img", "convert", "-n", "-f", "raw", "-O", "raw", source, uri]))
        let inward = try run(["qemu-img", "compare", "-f", "raw", "-F", "raw", source, uri])
        server.expectSuccess(inward)
        #expect(inward.stdout.contains("Images are identical"), "\(inward)")

        let copy = scratch.file("copy.raw")
        server.expectSuccess(try run(["qemu-img", "convert", "-f", "raw", "-O", "raw", uri, copy]))
        let outward = try run(["qemu-img", "compare", "-f", "raw", "-F", "raw", uri, copy])
        server.expectSuccess(outward)
        #expect(outward.stdout.contains("Images are identical"), "\(outward)")

        #expect(firstDifference(try readFile(copy), original) == nil, "copied out image differs from the source")
        #expect(firstDifference(try readFile(disk.path), original) == nil, "the export's backing file differs from the source")
    }

    @Test("qemu-img compare reports a one-byte difference in an export")
    func compareDetectsMismatch() throws {
        let scratch = try Scratch()
        defer { scratch.remove() }
        var data = try randomBytes(8 * mebibyte)
        let disk = Export(name: "disk", path: scratch.file("disk.img"))
        try writeFile(disk.path, data)
        let offset = 5 * mebibyte + 12345
        data[offset] ^= 0xff
        let local = scratch.file("local.raw")
        try writeFile(local, data)
        let server = try StorageServer(exports: [disk], in: scratch)
        defer { server.stop() }

        let result = try run(["qemu-img", "compare", "-f", "raw", "-F", "raw", local, server.uri("disk")])
        #expect(result.status == 1, "qemu-img compare must report a mismatch (status 1): \(result)")
        // QEMU reports the 512-byte sector holding the first difference.
        #expect(result.stdout.contains("Content mismatch at offset \(offset / 512 * 512)!"), "\(result)")
    }
}
