import Foundation
import Testing

/// `bulkhead-cryptd --metadata-cache`: the bound on decrypted tree nodes
/// kept in memory (issue 3: "the metadata cache is bounded and
/// configurable").
@Suite("the crypt domain's metadata cache") struct MetadataCacheTests {
    @Test("a cache of 1 MiB, smaller than one volume's tree: random writes and reads still verify; bad sizes are refused")
    func tinyCache() throws {
        // 256 nodes against two trees of 261 (a 64 MiB volume has 256
        // leaves): every pass over a volume evicts and reads nodes back.
        let chain = try Chain(cryptdOptions: ["--metadata-cache", "1"])
        defer { chain.shutdown() }
        for volume in ["vm1", "vm2"] {
            let result = try run([
                "fio", "--name=cache", "--ioengine=nbd", "--uri=" + chain.uri(volume), "--iodepth=16", "--rw=randwrite",
                "--bs=4k", "--size=64M", "--verify=crc32c", "--do_verify=1", "--verify_fatal=1", "--verify_state_save=0",
                "--randseed=2718",
            ], timeout: 240)
            #expect(result.succeeded && result.output.contains("err= 0"), "\(volume): \(result)\n\(chain.logs)")
            #expect(!result.output.contains("verify:"), "\(volume): \(result)")
        }
        // Read once serving: the line follows the sockets' listening.
        #expect(chain.logs.contains("metadata-cache=1 MiB"), "\(chain.logs)")
        for bad in ["0", "65537", "lots"] {
            let refused = try run(try chain.cryptdCommand(["--metadata-cache", bad]))
            #expect(!refused.succeeded, "--metadata-cache \(bad) was accepted")
            #expect(refused.output.contains("metadata-cache"), "\(refused)")
        }
    }
}
