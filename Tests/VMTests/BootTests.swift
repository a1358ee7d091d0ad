import BlockDevice
import Foundation
import Keys
import PoolFormat
import Testing

@testable import CryptPool

/// Issue 8: a real machine (qemu, software emulation) boots through Bulkhead.
/// The Debian kernel starts the initramfs of packaging/initramfs/build,
/// whose /init runs `bulkhead boot`: it measures the storage and crypt
/// domains into PCR 15 of the guest's TPM (swtpm) and launches them on the
/// virtio pool disk; the crypt domain unseals the pool key from that TPM;
/// the toolstack attaches the root volume with the kernel NBD driver and
/// mounts it; /init moves it to / and the test root's /sbin/init
/// (packaging/test-root/init) reports on the serial console and powers off.
/// Three boots in all, run one after the other.
@Suite(.serialized)
struct BootTests {
    static let rootUp = "BULKHEAD-VM-TEST: real root is up"
    static let recoveryPrompt = "Type the recovery key (input is not shown) and press Enter:"

    @Test func bootsIntoTheRootVolumeWithTheKeyUnsealedFromTheTPM() throws {
        let artifacts = try BootArtifacts.shared.get()
        let machine = try VirtualMachine()
        defer { machine.remove() }
        try FileManager.default.copyItem(atPath: artifacts.pristinePool, toPath: machine.pool)

        let boot = try machine.boot(artifacts, initramfs: artifacts.initramfs, marker: Self.rootUp)
        let console = boot.console
        #expect(console.contains(Self.rootUp), "the real root's init did not run; console:\n\(lastPart(console))")
        #expect(console.contains("BULKHEAD-VM-TEST: done"))
        // / is the root volume, through the kernel NBD driver.
        let mounts = section(of: console, from: "--- /proc/mounts ---", to: "--- end ---")
        #expect(mounts.contains { $0.hasPrefix("/dev/nbd0 / ext4 ") }, "/ is not /dev/nbd0 (ext4):\n\(mounts.joined(separator: "\n"))")
        // The supervisor (which holds the NBD attachment) and the domains
        // outlive the move to the real root.
        let running = console.split(whereSeparator: \.isNewline).filter { $0.contains("BULKHEAD-VM-TEST: running pid") }
        for program in ["bulkhead-storaged", "bulkhead-cryptd", "@bulkhead boot --supervise"] {
            #expect(running.contains { $0.contains(program) }, "\(program) is not running under the real root:\n\(running.joined(separator: "\n"))")
        }
        #expect(console.contains("BULKHEAD-VM-TEST: root is writable"))
        // The crypt domain unsealed the key from the guest's TPM: the image
        // holds no key, and its log says which keyslot opened the pool.
        #expect(console.contains("unlocked=tpm2 keyslot"), "the crypt domain did not report the tpm2 keyslot; console:\n\(lastPart(console))")
        #expect(!console.contains(Self.recoveryPrompt))
        expectNoSecrets(console, artifacts)
        #expect(!console.contains("Kernel panic"))
        let seconds = boot.markerSeconds.map { String(format: "%.1f", $0) } ?? "-"
        let uptime = console.split(whereSeparator: \.isNewline).first { $0.contains("seconds since the kernel started") }.map(String.init) ?? ""
        print("VMTests: real root up \(seconds) s after qemu started (software emulation); guest powered off after \(String(format: "%.1f", boot.seconds)) s; \(uptime)")
        print(artifacts.report)
    }

    /// A flipped bit in the root of the root volume's tree: the pool opens
    /// (tree nodes authenticate when read), every read of the volume fails
    /// its check, the mount fails, and /init prints the crypt domain's
    /// integrity message and powers off instead of leaving a kernel panic.
    @Test func aFlippedBitInTheRootVolumeTreeStopsTheBoot() throws {
        let artifacts = try BootArtifacts.shared.get()
        let machine = try VirtualMachine()
        defer { machine.remove() }
        try FileManager.default.copyItem(atPath: artifacts.pristinePool, toPath: machine.pool)
        let root = try checkpointedRootVolumeTreeRoot(machine.pool, artifacts)
        try flipBit(machine.pool, at: root * UInt64(PoolLayout.blockSize) + 3000, bit: 5)

        let boot = try machine.boot(artifacts, initramfs: artifacts.initramfs, marker: "BOOT STOPPED")
        let console = boot.console
        #expect(boot.markerSeconds != nil, "/init did not stop the boot; console:\n\(lastPart(console))")
        #expect(
            console.contains(
                "BOOT STOPPED: volume root failed its integrity check (the pool disk was modified): "
                    + "integrity failure: volume root, volume tree node at index 0, tree level 3, physical block \(root):"),
            "no integrity message for block \(root); console:\n\(lastPart(console))")
        #expect(!console.contains(Self.rootUp))
        #expect(!console.contains("Kernel panic"))
        #expect(boot.qemuStatus == 0, "the guest did not power off")
        expectNoSecrets(console, artifacts)
        print("VMTests: the failure boot stopped \(boot.markerSeconds.map { String(format: "%.1f", $0) } ?? "-") s after qemu started:")
        for line in console.split(whereSeparator: \.isNewline) where line.contains("bulkhead-init:") {
            print("  " + line)
        }
    }

    /// A different storage domain executable (one byte appended) changes
    /// the measured launch: the TPM refuses to unseal, /init asks for the
    /// recovery key on the serial console, the test types it there, and
    /// the boot goes on with it.
    @Test func aChangedStorageDomainFallsBackToTheRecoveryKeyTypedOnTheConsole() throws {
        let artifacts = try BootArtifacts.shared.get()
        let machine = try VirtualMachine()
        defer { machine.remove() }
        try FileManager.default.copyItem(atPath: artifacts.pristinePool, toPath: machine.pool)

        let boot = try machine.boot(
            artifacts, initramfs: artifacts.changedInitramfs, marker: Self.rootUp, answer: (Self.recoveryPrompt, artifacts.recoveryKey))
        let console = boot.console
        #expect(console.contains(Self.recoveryPrompt), "no recovery prompt; console:\n\(lastPart(console))")
        #expect(console.contains("PCR 15 (sha256) differ from the values the key was sealed to"), "no PCR mismatch message; console:\n\(lastPart(console))")
        #expect(console.contains("bulkhead-init: booted with the recovery key"))
        #expect(console.contains(Self.rootUp), "the real root did not come up after the recovery key; console:\n\(lastPart(console))")
        #expect(console.contains("unlocked=recovery key"))
        #expect(console.contains("BULKHEAD-VM-TEST: root is writable"))
        #expect(!console.contains("Kernel panic"))
        expectNoSecrets(console, artifacts)
        print("VMTests: recovery boot: real root up \(boot.markerSeconds.map { String(format: "%.1f", $0) } ?? "-") s after qemu started")
        for line in console.split(whereSeparator: \.isNewline) where line.contains("bulkhead-init:") {
            print("  " + line)
        }
    }

    // MARK: Helpers

    /// Folds the root volume's log into its tree in the pool at `path` (a
    /// checkpoint: a clean close leaves the log for the next open to
    /// replay) and returns the physical block of the tree's root.
    private func checkpointedRootVolumeTreeRoot(_ path: String, _ artifacts: BootArtifacts) throws -> UInt64 {
        let device = try FileBlockDevice(path: path)
        let pool = try Pool.open(storage: device, secret: .passphrase(Array(artifacts.passphrase.utf8)), anchor: nil)
        try pool.exclusiveCommit { _, _ in }
        let volume = try #require(pool.state.withLock { $0.volumes.values.first { $0.name == "root" } })
        try pool.close()
        #expect(volume.overlay.isEmpty && volume.depth == 3 && !volume.root.isNull)
        return volume.root.block
    }

    private func flipBit(_ path: String, at offset: UInt64, bit: UInt8) throws {
        guard let handle = FileHandle(forUpdatingAtPath: path) else { throw VMTestError("cannot open \(path)") }
        defer { try? handle.close() }
        try handle.seek(toOffset: offset)
        let byte = try #require(try handle.read(upToCount: 1)?.first)
        try handle.seek(toOffset: offset)
        try handle.write(contentsOf: Data([byte ^ (1 << bit)]))
        try handle.synchronize()
    }

    private func expectNoSecrets(_ console: String, _ artifacts: BootArtifacts) {
        #expect(!console.contains(artifacts.passphrase), "the passphrase appeared on the serial console")
        #expect(!artifacts.recoveryKey.isEmpty && !console.contains(artifacts.recoveryKey), "the recovery key appeared on the serial console")
        #expect(artifacts.masterKeyHex.count == 64 && !console.lowercased().contains(artifacts.masterKeyHex), "the master key appeared on the serial console")
    }

    /// The console lines between two marker lines.
    private func section(of console: String, from start: String, to end: String) -> [String] {
        let lines = console.split(whereSeparator: \.isNewline).map { $0.trimmingCharacters(in: .whitespaces) }
        guard let first = lines.firstIndex(of: start) else { return [] }
        let rest = lines[(first + 1)...]
        return Array(rest.prefix { $0 != end })
    }
}
