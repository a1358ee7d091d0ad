import Foundation
import Testing

/// What the consumer flushed survives a clean restart of the crypt domain,
/// and the pool authenticates end to end afterwards.
@Suite("persistence") struct PersistenceTests {
    @Test("write, flush, SIGTERM cryptd, restart: data reads back; bulkhead verify finds 0 failures")
    func restartKeepsData() throws {
        let chain = try Chain()
        defer { chain.shutdown() }
        let data = randomData(24 * mebibyte + 4096)
        try writeExport(chain.uri("vm1"), data, in: chain.scratch)
        let patterns = try qemuIO(chain.uri("vm2"), ["write -P 0x3c 0 1M", "write -P 0x3d 10M 123457", "write -z 512k 8k", "flush"])
        #expect(patterns.succeeded, "\(patterns)\n\(chain.logs)")

        for round in 1...2 {
            #expect(chain.stopCryptd() == 0, "cryptd must exit 0 on SIGTERM\n\(chain.logs)")
            try chain.startCryptd()
            let first = try readExport(chain.uri("vm1"), in: chain.scratch)
            #expect(firstDifference(first.prefix(data.count), data) == nil, "round \(round): vm1 lost data\n\(chain.logs)")
            #expect(allBytes(first, data.count..<first.count, equal: 0))
            let second = try qemuIO(chain.uri("vm2"), [
                "read -P 0x3c 0 512k", "read -P 0 512k 8k", "read -P 0x3c 520k 504k", "read -P 0x3d 10M 123457", "read -P 0 1M 9M",
            ])
            #expect(second.succeeded, "round \(round): \(second)\n\(chain.logs)")
        }

        #expect(chain.stopCryptd() == 0)
        let verify = try run([try Tools.built("bulkhead"), "verify", chain.storage, "--key-file", chain.keyFile, "--state-dir", chain.stateDirectory], timeout: 120)
        #expect(verify.succeeded, "\(verify)\n\(chain.logs)")
        #expect(verify.output.contains("Verified 2 volumes"), "\(verify)")
        #expect(verify.output.contains(": 0 integrity failures"), "\(verify)")
        #expect(!verify.output.contains("FAILED"), "\(verify)")
        let blocks = verify.output.split(separator: "\n").first { $0.hasPrefix("Verified") }
            .flatMap { $0.split(separator: " ").dropFirst(3).first }.flatMap { Int($0) }
        #expect((blocks ?? 0) >= data.count / 4096, "verify checked too few blocks: \(verify)")
    }
}
