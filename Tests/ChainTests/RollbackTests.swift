import Foundation
import Testing

/// The storage domain serving an older copy of the pool is caught: the
/// trust anchor in cryptd's --state-dir remembers the newer generation.
@Suite("rollback through the chain") struct RollbackTests {
    @Test("restore an older pool image: cryptd refuses to start, saying \"rolled back\"")
    func olderImageRefused() throws {
        let chain = try Chain(volumes: [VolumeSpec(name: "vm1", size: 32 * mebibyte)])
        defer { chain.shutdown() }
        let old = try qemuIO(chain.uri("vm1"), ["write -P 0x01 0 1M", "flush"])
        #expect(old.succeeded, "\(old)\n\(chain.logs)")
        #expect(chain.stopCryptd() == 0)
        #expect(chain.stopStoraged() == 0)
        let saved = chain.scratch.file("saved.img")
        try runChecked(["cp", "--sparse=always", chain.image, saved])

        try chain.startStoraged()
        try chain.startCryptd()
        let newer = try qemuIO(chain.uri("vm1"), ["write -P 0x02 0 1M", "flush"])
        #expect(newer.succeeded, "\(newer)\n\(chain.logs)")
        #expect(chain.stopCryptd() == 0)
        #expect(chain.stopStoraged() == 0)
        let current = chain.scratch.file("current.img")
        try runChecked(["cp", "--sparse=always", chain.image, current])

        try runChecked(["cp", "--sparse=always", saved, chain.image])
        try chain.startStoraged()
        let cryptd = try chain.launchCryptd()
        let status = cryptd.waitForExit(seconds: 60)
        chain.forgetCryptd()
        if status == nil { cryptd.kill9() }
        #expect(status != nil && status != 0, "cryptd served a rolled-back pool (status \(status.map(String.init) ?? "still running")): \(cryptd.log)")
        let lines = cryptd.log.split(separator: "\n")
        let message = lines.filter { $0.contains("rolled back") }
        #expect(message.count == 1, "expected one line saying \"rolled back\":\n\(cryptd.log)")
        #expect(message.first?.hasPrefix("bulkhead-cryptd: ") == true, "\(cryptd.log)")
        #expect(!FileManager.default.fileExists(atPath: chain.volumeSocket("vm1")) || (try? HandshakeProbe.go(socket: chain.volumeSocket("vm1"), export: "vm1")) == nil,
                "a volume is served from the rolled-back pool")

        // The current image put back opens again, with the newer data: the
        // refusal was about the rollback alone.
        #expect(chain.stopStoraged() == 0)
        try runChecked(["cp", "--sparse=always", current, chain.image])
        try chain.startStoraged()
        try chain.startCryptd()
        let check = try qemuIO(chain.uri("vm1"), ["read -P 0x02 0 1M"])
        #expect(check.succeeded, "\(check)\n\(chain.logs)")
    }
}
