import Foundation
import Testing

/// Each volume is its own export on its own socket: no data and no export
/// name crosses from one to the other.
@Suite("volume isolation") struct IsolationTests {
    @Test("data written to vm1 is not visible in vm2, and the other way round")
    func dataStaysInItsVolume() throws {
        let chain = try Chain()
        defer { chain.shutdown() }
        let one = try qemuIO(chain.uri("vm1"), ["write -P 0xa1 0 4M", "write -P 0xa2 60M 4M", "flush"])
        #expect(one.succeeded, "\(one)\n\(chain.logs)")
        let empty = try qemuIO(chain.uri("vm2"), ["read -P 0 0 4M", "read -P 0 60M 4M"])
        #expect(empty.succeeded, "vm2 shows data written to vm1: \(empty)")
        let two = try qemuIO(chain.uri("vm2"), ["write -P 0xb2 1M 2M", "flush"])
        #expect(two.succeeded, "\(two)\n\(chain.logs)")

        let (first, second) = (try readExport(chain.uri("vm1"), in: chain.scratch), try readExport(chain.uri("vm2"), in: chain.scratch))
        #expect(allBytes(first, 0..<(4 * mebibyte), equal: 0xa1), "vm2's write reached vm1")
        #expect(allBytes(first, (4 * mebibyte)..<(60 * mebibyte), equal: 0))
        #expect(allBytes(first, (60 * mebibyte)..<(64 * mebibyte), equal: 0xa2))
        #expect(allBytes(second, 0..<mebibyte, equal: 0))
        #expect(allBytes(second, mebibyte..<(3 * mebibyte), equal: 0xb2))
        #expect(allBytes(second, (3 * mebibyte)..<(64 * mebibyte), equal: 0), "vm1's data shows in vm2")
    }

    @Test("a client of vm1's socket cannot open vm2 there: NBD_OPT_GO for another name fails")
    func otherExportRefused() throws {
        let chain = try Chain()
        defer { chain.shutdown() }
        let size = UInt64(64 * mebibyte)
        for (socket, own, other) in [("vm1", "vm1", "vm2"), ("vm2", "vm2", "vm1")] {
            let path = chain.volumeSocket(socket)
            #expect(try HandshakeProbe.go(socket: path, export: own) == .opened(size: size))
            #expect(try HandshakeProbe.go(socket: path, export: "") == .opened(size: size), "the empty name is the socket's own volume")
            let refused = try HandshakeProbe.go(socket: path, export: other)
            guard case .refused(let type, _) = refused else {
                Issue.record("\(socket).sock opened export \(other): \(refused)")
                continue
            }
            #expect(type == .errUnknown, "\(refused)")
            let missing = try HandshakeProbe.go(socket: path, export: "no-such-volume")
            #expect(missing != .opened(size: size), "\(missing)")

            // A stock client is refused the same way.
            let info = try run(["nbdinfo", "nbd+unix:///\(other)?socket=\(path)"])
            #expect(!info.succeeded, "nbdinfo opened \(other) on \(socket).sock: \(info)")
        }
        // The refusals left the daemon serving.
        let after = try qemuIO(chain.uri("vm1"), ["write -P 0x42 0 64k", "read -P 0x42 0 64k"])
        #expect(after.succeeded, "\(after)\n\(chain.logs)")
    }

    @Test("--allow VOLUME=UID: each volume's socket admits only its own consumers")
    func perVolumeConsumers() throws {
        // Root (this test) is vm1's consumer; vm2 belongs to uid 65534 alone.
        let chain = try Chain(cryptdOptions: ["--allow", "vm1=0", "--allow", "vm2=65534"])
        defer { chain.shutdown() }
        let own = try run(["nbdinfo", "--size", chain.uri("vm1")])
        #expect(own.succeeded, "\(own)\n\(chain.logs)")
        let other = try run(["nbdinfo", "--size", chain.uri("vm2")])
        #expect(!other.succeeded, "root opened vm2, which only uid 65534 may use: \(other)")
        // A malformed value is a one-line usage error before anything opens.
        let bad = try run(try chain.cryptdCommand(["--allow", "vm1"]))
        #expect(!bad.succeeded && bad.output.contains("bad --allow"), "\(bad)")
    }
}
