import Foundation
import LaunchMeasurement
import TPM
import Testing
import Toolstack

/// What is measured, in which canonical form, and the PCR prediction,
/// checked against a real swtpm and a real measured boot.
@Suite("Measured launch") struct MeasurementTests {
    static let digests: [DomainRole: [UInt8]] = [.storage: sha256(Array("storaged".utf8)), .crypt: sha256(Array("cryptd".utf8))]

    @Test("the canonical configuration ignores spelling and follows what runs")
    func canonicalForm() throws {
        let base = try BootManifest(parsing: ManifestTests.minimal, file: "a.toml")
        let respelled = try BootManifest(
            parsing: "# comment\n" + ManifestTests.minimal.replacingOccurrences(of: "user = 900", with: "user   =   900   # the storage uid"),
            file: "b.toml")
        #expect(base.launchEvents(executableDigests: Self.digests) == respelled.launchEvents(executableDigests: Self.digests))

        let events = base.launchEvents(executableDigests: Self.digests)
        #expect(events.map(\.kind) == [.executable, .configuration, .executable, .configuration])
        #expect(events.map(\.domain) == [.storage, .storage, .crypt, .crypt])
        #expect(events[1].detail.hasPrefix("bulkhead-launch v1\ndomain=storage\nuser=900\nsandbox=true\nseccomp="))
        #expect(events[1].detail.contains("arg=--export\narg=pool=/dev/vdb\n"))
        #expect(events[3].detail.contains("grant=ro:/etc/bulkhead/pool.key\n"))

        let changed = try BootManifest(
            parsing: ManifestTests.minimal.replacingOccurrences(of: "path = \"/dev/vdb\"", with: "path = \"/dev/vdc\""), file: "c.toml")
        let other = changed.launchEvents(executableDigests: Self.digests)
        #expect(other[1].digest != events[1].digest, "a different disk is a different storage configuration")
        #expect(other[3].digest == events[3].digest)
        #expect(predictedPCRs(for: changed, executableDigests: Self.digests) != predictedPCRs(for: base, executableDigests: Self.digests))
    }

    @Test("the prediction is the extend fold of the events from the reset value")
    func fold() throws {
        let manifest = try BootManifest(parsing: "pcr = 12\n" + ManifestTests.minimal, file: "m.toml")
        var value = [UInt8](repeating: 0, count: 32)
        for event in manifest.launchEvents(executableDigests: Self.digests) {
            #expect(event.pcr == 12)
            value = sha256(value + event.digestBytes!)
        }
        #expect(predictedPCRs(for: manifest, executableDigests: Self.digests) == [12: value])
        let text = manifest.launchEvents(executableDigests: Self.digests).map(EventLogFormat.line(for:)).joined()
        #expect(replay(try EventLogFormat.events(from: text)) == [12: value])
        // A log whose configuration text was altered after the fact is refused.
        let forged = text.replacingOccurrences(of: "user=901", with: "user=902")
        #expect(throws: EventLogFormat.DecodeError.self) { try EventLogFormat.events(from: forged) }
    }

    @Test("extending a real swtpm PCR with the event list reaches the predicted value")
    func swtpmReachesPrediction() throws {
        let tpm = try SoftwareTPM()
        let manifest = try BootManifest(parsing: ManifestTests.minimal, file: "m.toml")
        let context = try TPMContext(tcti: tpm.tcti)
        let selection = try PCRSelection([15])
        #expect(try context.readPCRs(selection)[15] == resetPCRValue)
        for event in manifest.launchEvents(executableDigests: Self.digests) {
            try context.extendPCR(event.pcr, digest: event.digestBytes!)
        }
        #expect(try context.readPCRs(selection) == predictedPCRs(for: manifest, executableDigests: Self.digests))
    }

    @Test("a measured boot: the event log replays to the TPM's PCR, which the prediction foresaw; another storage executable changes it")
    func measuredBoot() throws {
        try requireBootPrivileges()
        let tpm = try SoftwareTPM()
        let fixture = try BootFixture(tcti: tpm.tcti)
        let predicted = try Measurement.predictedPCRs(forManifestAt: fixture.manifestPath)
        try fixture.boot()
        let eventlog = try fixture.bulkhead(["eventlog"])
        #expect(eventlog.succeeded, "\(eventlog.output)")
        #expect(eventlog.output.contains("match") && !eventlog.output.contains("MISMATCH"), "\(eventlog.output)")
        let measured = try TPMContext(tcti: tpm.tcti).readPCRs(PCRSelection([15]))
        #expect(measured == predicted)
        #expect(measured[15] != resetPCRValue)
        try fixture.stop()

        // The same boot with a storage executable that differs by one byte,
        // on a TPM fresh from reset.
        let tpm2 = try SoftwareTPM()
        fixture.tcti = tpm2.tcti
        try fixture.useModifiedStorageExecutable()
        try fixture.boot()
        let other = try TPMContext(tcti: tpm2.tcti).readPCRs(PCRSelection([15]))
        #expect(other[15] != measured[15], "a different storage executable must give a different PCR 15")
        #expect(try fixture.bulkhead(["eventlog"]).succeeded)
        // The first boot's log does not describe this TPM: eventlog flags it.
        try fixture.stop()
        let mismatch = try run([try built("bulkhead"), "eventlog", "--manifest", fixture.manifestPath, "--tcti", tpm.tcti])
        #expect(mismatch.status == 2 && mismatch.output.contains("MISMATCH"), "\(mismatch.output)")
    }

    @Test("a tpm2 keyslot sealed with --tpm2-predict unseals at the predicted launch only; another storage executable gets the one-line refusal")
    func predictedKeyslotUnsealsOnlyAtThePredictedLaunch() throws {
        try requireBootPrivileges()
        let tpm = try SoftwareTPM()
        // A swtpm reached over loopback TCP is outside a sandboxed domain's
        // network namespace; the sandbox has its own tests.
        let fixture = try BootFixture(tcti: tpm.tcti)
        fixture.sandbox = false
        fixture.keyFileKeyslot = false
        try fixture.writeManifest()
        let enrol = try run([
            try built("bulkhead"), "keyslot", "add", fixture.image, "--key-file", fixture.keyFile,
            "--tpm2", "--tpm2-predict", fixture.manifestPath, "--tpm2-device", tpm.tcti,
        ])
        #expect(enrol.succeeded, "\(enrol.output)")

        // Before the launch PCR 15 is at its reset value: the keyslot stays sealed.
        let early = try TPMContext(tcti: tpm.tcti).readPCRs(PCRSelection([15]))
        #expect(early[15] == resetPCRValue)
        try fixture.boot()
        let served = try run(["nbdinfo", "--size", fixture.uri("vm1")])
        #expect(served.succeeded && served.output.trimmingCharacters(in: .whitespacesAndNewlines) == String(128 << 20), "\(served.output)")
        try fixture.stop()

        // The same manifest naming a storage executable that differs by one
        // byte, after a reboot of the same TPM: the launch measures
        // differently and the crypt domain cannot unseal.
        try tpm.reboot()
        fixture.tcti = tpm.tcti
        try fixture.useModifiedStorageExecutable()
        let refused = try fixture.bulkhead(["boot"], timeout: 200)
        let logs = fixture.logs
        #expect(!refused.succeeded, "\(refused.output)")
        #expect(logs.contains("PCR 15") && logs.contains("recovery key"), "the crypt domain must name the PCR and the recovery key:\n\(refused.output)\n\(logs)")

        // The recovery path: the same launch, unlocked with the recovery key
        // (what /init passes after its prompt) instead of the TPM.
        let recovered = try fixture.bulkhead(["boot", "--recovery-key-file", fixture.scratch.file("recovery.key")], timeout: 200)
        #expect(recovered.succeeded, "\(recovered.output)\n\(fixture.logs)")
        let again = try run(["nbdinfo", "--size", fixture.uri("vm1")])
        #expect(again.succeeded && again.output.trimmingCharacters(in: .whitespacesAndNewlines) == String(128 << 20), "\(again.output)")
        #expect(fixture.logs.contains("unlocked=recovery key"), "\(fixture.logs)")
        // What ran is what was measured: the crypt domain's configuration
        // names the recovery key file, not the TPM.
        let events = try Measurement.readLog("\(fixture.runtimeDirectory)/eventlog.jsonl")
        let crypt = try #require(events.last { $0.domain == .crypt && $0.kind == .configuration })
        #expect(crypt.detail.contains("arg=--recovery-key-file\n") && !crypt.detail.contains("arg=--tpm2\n"), "\(crypt.detail)")
        try fixture.stop()
    }
}
