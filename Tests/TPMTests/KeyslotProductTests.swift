import Foundation
import Testing
@testable import TPM

/// TPM keyslots end to end (issue 5): `bulkhead keyslot add --tpm2` seals
/// the master key in a real swtpm, the real `bulkhead-cryptd --tpm2`
/// unseals it and serves the volume to qemu-io.
@Suite(.enabled(if: SoftwareTPM.shouldRun, "swtpm is not installed"), .serialized)
struct KeyslotProductTests {
    @Test func enrolsAndServesThroughATPM2Keyslot() throws {
        let tpm = try SoftwareTPM()
        let pool = try EnrolledPool(tcti: tpm.tcti)
        try pool.enrol(["--tpm2-pcrs", "7,15"])
        try pool.enrol(["--tpm2-pcrs", "7", "--tpm2-pin-file", pool.passphraseFile])

        let dump = try pool.bulkheadChecked(["dump", pool.image, "--key-file", pool.passphraseFile]).output
        #expect(dump.contains("2: tpm2  pcrs sha256:7,15\n"), "\(dump)")
        #expect(dump.contains("3: tpm2  pcrs sha256:7 +pin"), "\(dump)")

        let cryptd = try pool.startCryptd(["--tpm2", "--tpm2-device", tpm.tcti])
        try pool.writeAndCheck(pattern: 0x5a)
        #expect(cryptd.terminate() == 0, "\(cryptd.log)")

        // Served again through the TPM, the data is there.
        let again = try pool.startCryptd(["--tpm2", "--tpm2-device", tpm.tcti])
        try pool.check(pattern: 0x5a)
        #expect(again.terminate() == 0)
    }

    @Test func refusesAfterASealedPCRMovesNamingItAndPointingToTheRecoveryKey() throws {
        let tpm = try SoftwareTPM()
        let pool = try EnrolledPool(tcti: tpm.tcti)
        try pool.enrol(["--tpm2-pcrs", "7,15"])
        let before = try Data(contentsOf: URL(fileURLWithPath: pool.image))
        do { try TPMContext(tcti: tpm.tcti).extendPCR(15, digest: randomDigest()) }

        let refused = try pool.cryptdRefusal(["--tpm2", "--tpm2-device", tpm.tcti])
        let errors = lines(of: refused.output, startingWith: "bulkhead-cryptd:")
        #expect(errors.count == 1, "\(refused.output)")
        #expect(refused.output.split(separator: "\n").count == 1, "more than one line: \(refused.output)")
        #expect(errors.first?.contains("PCR 15 (sha256) differ") == true, "\(refused.output)")
        #expect(errors.first?.contains("PCR 7,") != true && errors.first?.contains("PCR 7 ") != true)
        #expect(errors.first?.contains("--recovery-key-file") == true, "\(refused.output)")
        #expect(try Data(contentsOf: URL(fileURLWithPath: pool.image)) == before, "the refused open changed the pool")

        // The recovery key still opens it.
        let recovered = try pool.startCryptd(["--recovery-key-file", pool.recoveryFile])
        #expect(recovered.terminate() == 0)
    }

    @Test func aPINIsRequiredAndChecked() throws {
        let tpm = try SoftwareTPM()
        let pool = try EnrolledPool(tcti: tpm.tcti)
        let pinFile = pool.directory.file("pin")
        let wrongFile = pool.directory.file("wrong-pin")
        _ = FileManager.default.createFile(atPath: pinFile, contents: Data("2468".utf8))
        _ = FileManager.default.createFile(atPath: wrongFile, contents: Data("1357".utf8))
        try pool.enrol(["--tpm2-pcrs", "7", "--tpm2-pin-file", pinFile])

        let missing = try pool.cryptdRefusal(["--tpm2", "--tpm2-device", tpm.tcti])
        #expect(missing.output.contains("needs its PIN"), "\(missing.output)")
        let wrong = try pool.cryptdRefusal(["--tpm2", "--tpm2-device", tpm.tcti, "--tpm2-pin-file", wrongFile])
        #expect(wrong.output.contains("wrong PIN"), "\(wrong.output)")
        let cryptd = try pool.startCryptd(["--tpm2", "--tpm2-device", tpm.tcti, "--tpm2-pin-file", pinFile])
        #expect(cryptd.terminate() == 0)
    }

    @Test func aKeyslotSealedToPredictedValuesOpensOnlyOnceThePCRHoldsThem() throws {
        let tpm = try SoftwareTPM()
        let pool = try EnrolledPool(tcti: tpm.tcti)
        let measurement = randomDigest()
        let predicted = try {
            let context = try TPMContext(tcti: tpm.tcti)
            let current = try context.readPCRs(PCRSelection([15]))[15]!
            return PolicyDigest.extend(current, with: measurement)
        }()
        try pool.enrol(["--tpm2-pcr-values", "15=" + predicted.map { String(format: "%02x", $0) }.joined()])
        let dump = try pool.bulkheadChecked(["dump", pool.image, "--key-file", pool.passphraseFile]).output
        #expect(dump.contains("2: tpm2  pcrs sha256:15\n"), "\(dump)")

        let early = try pool.cryptdRefusal(["--tpm2", "--tpm2-device", tpm.tcti])
        #expect(early.output.contains("PCR 15 (sha256) differ"), "\(early.output)")

        do { try TPMContext(tcti: tpm.tcti).extendPCR(15, digest: measurement) }
        let cryptd = try pool.startCryptd(["--tpm2", "--tpm2-device", tpm.tcti])
        #expect(cryptd.terminate() == 0)
    }

    @Test func theMasterKeyNeverCrossesTheTPMTransportInClear() throws {
        let tpm = try SoftwareTPM()
        let proxy = try CapturingProxy(forwardingTo: tpm.port)
        let pool = try EnrolledPool(tcti: proxy.tcti)
        let master = try pool.masterKey()
        try pool.enrol(["--tpm2-pcrs", "7,15"])
        let cryptd = try pool.startCryptd(["--tpm2", "--tpm2-device", proxy.tcti])
        #expect(cryptd.terminate() == 0)
        proxy.stop()

        // TPM2_Create (0x153) and TPM2_Unseal (0x15E) went through the proxy...
        let commands = proxy.commands.value
        #expect(containsAnyWindow(of: [0x00, 0x00, 0x01, 0x53], window: 4, in: commands), "no TPM2_Create seen")
        #expect(containsAnyWindow(of: [0x00, 0x00, 0x01, 0x5E], window: 4, in: commands), "no TPM2_Unseal seen")
        // ...and no 8-byte run of the master key, in either direction.
        #expect(!containsAnyWindow(of: master, window: 8, in: proxy.captured), "the master key crossed the TPM transport in clear")
    }
}
