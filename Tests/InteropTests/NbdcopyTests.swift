import Foundation
import Testing

/// nbdcopy (libnbd) streams with several requests in flight, over several connections when the server allows.
@Suite("nbdcopy") struct NbdcopyTests {
    @Test("nbdcopy round-trips a random file through an export byte for byte")
    func roundTrip() throws {
        let scratch = try Scratch()
        defer { scratch.remove() }
        let size = 64 * mebibyte
        let original = try randomBytes(size)
        let source = scratch.file("source.raw")
        try writeFile(source, original)
        let disk = Export(name: "disk", path: scratch.file("disk.img"))
        try makeSparseFile(disk.path, size: size)
        let server = try StorageServer(exports: [disk], in: scratch)
        defer { server.stop() }

        server.expectSuccess(try run(["nbdcopy", "--flush", source, server.uri("disk")]))
        let back = scratch.file("back.raw")
        server.expectSuccess(try run(["nbdcopy", server.uri("disk"), back]))

        let copy = try readFile(back)
        #expect(copy.count == size)
        let difference = firstDifference(copy, original)
        #expect(difference == nil, "copy differs from the source at byte \(difference ?? -1)")
        #expect(firstDifference(try readFile(disk.path), original) == nil, "the export's backing file differs from the source")
    }
}
