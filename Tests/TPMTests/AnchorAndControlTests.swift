import Foundation
import TestSupport
import Testing
@testable import TPM

/// The TPM counter trust anchor and the crypt domain's control socket,
/// through the real executables and a real swtpm (issue 5).
@Suite(.enabled(if: SoftwareTPM.shouldRun, "swtpm is not installed"), .serialized)
struct AnchorAndControlTests {
    @Test func theCounterAnchorRefusesAPoolRestoredFromAnEarlierEpoch() throws {
        let tpm = try SoftwareTPM()
        let pool = try EnrolledPool(tcti: tpm.tcti)
        // The TPM counter alone, with a new state directory each time: as
        // after a reinstall of the crypt domain, no file anchor helps.
        func arguments() -> [String] {
            ["--key-file", pool.passphraseFile, "--anchor", "tpm2", "--tpm2-device", tpm.tcti,
             "--state-dir", pool.directory.file("state-\(UUID().uuidString)"), "--control", "none"]
        }
        let first = try pool.startCryptd(arguments())
        try pool.writeAndCheck(pattern: 0x11)
        #expect(first.terminate() == 0, "\(first.log)")
        let earlier = pool.directory.file("earlier.img")
        try FileManager.default.copyItem(atPath: pool.image, toPath: earlier)

        let second = try pool.startCryptd(arguments())
        try pool.writeAndCheck(pattern: 0x22)
        #expect(second.terminate() == 0, "\(second.log)")
        // A clean reopen is accepted and serves the newest data.
        let reopened = try pool.startCryptd(arguments())
        try pool.check(pattern: 0x22)
        #expect(reopened.terminate() == 0)

        // The pool restored from the copy taken one epoch earlier is refused.
        let newest = pool.directory.file("newest.img")
        try FileManager.default.moveItem(atPath: pool.image, toPath: newest)
        try FileManager.default.copyItem(atPath: earlier, toPath: pool.image)
        let refused = try pool.cryptdRefusal(arguments())
        let errors = lines(of: refused.output, startingWith: "bulkhead-cryptd:")
        #expect(errors.count == 1, "\(refused.output)")
        #expect(!refused.output.contains("ERROR") && !refused.output.contains("WARNING"), "\(refused.output)")
        #expect(errors.first?.contains("rolled back") == true && errors.first?.contains("TPM NV counter") == true, "\(refused.output)")

        // The newest copy back in place opens again.
        try FileManager.default.removeItem(atPath: pool.image)
        try FileManager.default.moveItem(atPath: newest, toPath: pool.image)
        let back = try pool.startCryptd(arguments())
        try pool.check(pattern: 0x22)
        #expect(back.terminate() == 0)
    }

    @Test func theCounterAdvancesWhileServingAtMostOncePerInterval() throws {
        let tpm = try SoftwareTPM()
        let pool = try EnrolledPool(tcti: tpm.tcti)
        let cryptd = try pool.startCryptd([
            "--key-file", pool.passphraseFile, "--anchor", "tpm2", "--anchor", "file", "--tpm2-device", tpm.tcti,
            "--anchor-interval", "1", "--control", "unix:" + pool.controlSocket,
        ])
        func epoch() throws -> UInt64? {
            let dump = try pool.bulkheadChecked(["dump", "--control", pool.controlSocket]).output
            return lines(of: dump, startingWith: "Epoch:").first.flatMap { UInt64($0.dropFirst(6).trimmingCharacters(in: .whitespaces)) }
        }
        let start = try #require(try epoch())
        // Idle: no commit, no advance.
        usleep(2_500_000)
        #expect(try epoch() == start)
        // A write and its flush: the next tick advances the epoch.
        try pool.writeAndCheck(pattern: 0x33)
        #expect(eventually(timeout: 10) { ((try? epoch()) ?? nil).map { $0 > start } ?? false })
        #expect(cryptd.terminate() == 0, "\(cryptd.log)")
    }

    @Test func theToolstackAdministersAServedPoolWithoutEverHoldingTheKey() throws {
        let tpm = try SoftwareTPM()
        let pool = try EnrolledPool(tcti: tpm.tcti)
        let master = try pool.masterKey()
        let cryptd = try pool.startCryptd([
            "--key-file", pool.passphraseFile, "--tpm2-device", tpm.tcti, "--control", "unix:" + pool.controlSocket,
        ])
        let bulkhead = try built("bulkhead")

        // Enrol through the crypt domain; bulkhead stops itself after its
        // control exchange, and its memory is searched for the key.
        let enrol = try Child(
            [bulkhead, "keyslot", "add", "--control", pool.controlSocket, "--tpm2", "--tpm2-pcrs", "7,15"],
            logPath: pool.directory.file("enrol.log"), environment: ["BULKHEAD_TEST_STOP_AFTER_CONTROL": "1"])
        #expect(eventually(timeout: 60) { enrol.isStopped || enrol.status != nil }, "bulkhead neither stopped nor ended")
        #expect(enrol.isStopped, "\(enrol.log)")
        #expect(try !memoryContains(pid: enrol.pid, master), "the master key is in bulkhead's memory")
        // The same scan finds the key where it is: in the crypt domain.
        #expect(try memoryContains(pid: cryptd.pid, master), "the memory scan does not find a key that is there")
        kill(enrol.pid, SIGCONT)
        #expect(enrol.waitForExit(seconds: 30) == 0, "\(enrol.log)")
        #expect(enrol.log.contains("Added tpm2 keyslot 2 sealed to PCRs sha256:7,15."), "\(enrol.log)")

        // Volumes come and go while the pool is served.
        let created = try pool.bulkheadChecked(["volume", "create", "--control", pool.controlSocket, "vm2", "--size", "1M"])
        #expect(created.output.contains("Created volume vm2"))
        try pool.writeAndCheck(pattern: 0x44, volume: "vm2")
        let listed = try pool.bulkheadChecked(["volume", "list", "--control", pool.controlSocket]).output
        #expect(listed.contains("vm1\t4194304") && listed.contains("vm2\t1048576"), "\(listed)")
        let dump = try pool.bulkheadChecked(["dump", "--control", pool.controlSocket]).output
        #expect(dump.contains("2: tpm2  pcrs sha256:7,15\n"), "\(dump)")
        try pool.bulkheadChecked(["volume", "delete", "--control", pool.controlSocket, "vm2"])
        #expect(!FileManager.default.fileExists(atPath: pool.serveDirectory + "/vm2.sock"))
        let after = try pool.bulkheadChecked(["volume", "list", "--control", pool.controlSocket]).output
        #expect(!after.contains("vm2"), "\(after)")
        // Bad input is refused with a reason, and the daemon stays up.
        let bad = try pool.bulkhead(["volume", "create", "--control", pool.controlSocket, "../evil", "--size", "1M"])
        #expect(bad.status != 0 && bad.output.contains("volume name"), "\(bad)")

        // Another uid is refused even when the socket's mode lets it connect.
        chmod(pool.controlSocket, 0o666)
        chmod(pool.directory.path, 0o755)
        let setpriv = try tool("setpriv", package: "util-linux")
        let stranger = try run(
            [setpriv, "--reuid=65534", "--regid=65534", "--clear-groups", bulkhead, "dump", "--control", pool.controlSocket],
            in: pool.directory)
        #expect(stranger.status != 0 && stranger.output.contains("crypt domain at") && !stranger.output.contains("Keyslots:"), "\(stranger)")
        #expect(cryptd.status == nil, "the crypt domain ended:\n\(cryptd.log)")
        #expect(cryptd.terminate() == 0, "\(cryptd.log)")

        // The keyslot the crypt domain sealed opens with the TPM.
        let unsealed = try pool.startCryptd(["--tpm2", "--tpm2-device", tpm.tcti])
        try pool.check(pattern: 0x00)
        #expect(unsealed.terminate() == 0)
    }
}
