import Foundation
import Testing

/// nbdinfo (libnbd) lists exports with NBD_OPT_LIST and queries each with NBD_OPT_INFO/NBD_OPT_GO.
@Suite("nbdinfo") struct NbdinfoTests {
    private struct Listing: Decodable {
        struct Entry: Decodable {
            let name: String
            let size: Int
            let readOnly: Bool
            enum CodingKeys: String, CodingKey {
                case name = "export-name", size = "export-size", readOnly = "is_read_only"
            }
        }
        let exports: [Entry]
    }

    private static func threeExports(in scratch: Scratch) throws -> [Export] {
        let exports = [
            Export(name: "alpha", path: scratch.file("alpha.img")),
            Export(name: "beta", path: scratch.file("beta.img")),
            Export(name: "gold", path: scratch.file("gold.img"), readOnly: true),
        ]
        for (export, size) in zip(exports, [64 * mebibyte, 32 * mebibyte, 16 * mebibyte + 4096]) {
            try makeSparseFile(export.path, size: size)
        }
        return exports
    }

    @Test("nbdinfo --list sees every export with its size and read-only flag")
    func listShowsEveryExport() throws {
        let scratch = try Scratch()
        defer { scratch.remove() }
        let exports = try Self.threeExports(in: scratch)
        let server = try StorageServer(exports: exports, in: scratch)
        defer { server.stop() }

        let result = try run(["nbdinfo", "--list", "--json", server.uri("")])
        server.expectSuccess(result)
        guard result.status == 0 else { return }
        let listing = try JSONDecoder().decode(Listing.self, from: Data(result.stdout.utf8))
        // The empty name may be listed too (it reaches the first export); every other entry must be one of ours.
        let named = listing.exports.filter { !$0.name.isEmpty }
        #expect(Set(named.map(\.name)) == Set(exports.map(\.name)), "listed: \(listing.exports.map(\.name))")
        #expect(named.count == exports.count, "an export is listed twice: \(named.map(\.name))")
        for export in exports {
            let expectedSize = try FileManager.default.attributesOfItem(atPath: export.path)[.size] as? Int
            guard let entry = named.first(where: { $0.name == export.name }) else { continue }
            #expect(entry.size == expectedSize, "size of \(export.name)")
            #expect(entry.readOnly == export.readOnly, "read-only flag of \(export.name)")
        }
    }

    @Test("the empty export name reaches the first export; other names their own")
    func defaultExportIsTheFirst() throws {
        let scratch = try Scratch()
        defer { scratch.remove() }
        let server = try StorageServer(exports: try Self.threeExports(in: scratch), in: scratch)
        defer { server.stop() }

        for (name, size) in [("", 64 * mebibyte), ("alpha", 64 * mebibyte), ("beta", 32 * mebibyte), ("gold", 16 * mebibyte + 4096)] {
            let result = try run(["nbdinfo", "--size", server.uri(name)])
            server.expectSuccess(result)
            #expect(result.stdout.trimmingCharacters(in: .whitespacesAndNewlines) == String(size), "size of export \"\(name)\"")
        }
        let missing = try run(["nbdinfo", "--size", server.uri("no-such-export")])
        #expect(missing.status != 0, "an unknown export name must be refused: \(missing)")
    }
}
