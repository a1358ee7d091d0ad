import BlockDevice
import Foundation

@testable import CryptPool

/// What every boot shares, built once per test run by the packaging scripts
/// and commands a user runs (docs/boot.md): the executables, the test root
/// tree, a pristine pool image holding it with a tpm2 keyslot sealed to the
/// launch the initramfs's manifest describes (`--tpm2-predict`), the TPM
/// state it was sealed in, the initramfs (no key in it) and one whose
/// storage domain executable differs by one byte appended. They live under
/// .build/static/vmtests, rebuilt on each run.
struct BootArtifacts: Sendable {
    let kernel: String
    let initramfs: String
    /// The same initramfs but for its storage domain executable: a launch
    /// the keyslot was not sealed to.
    let changedInitramfs: String
    /// The pool as packaging/pool-image/build left it, plus the tpm2
    /// keyslot; boots use copies.
    let pristinePool: String
    /// The swtpm state folder holding the keyslot's sealing key; boots use copies.
    let pristineTPM: String
    /// The passphrase, recovery key and master key (hex), which must never
    /// reach the console.
    let passphrase: String
    let recoveryKey: String
    let masterKeyHex: String
    /// What packaging/build-static and packaging/initramfs/build printed.
    let report: String

    /// Seconds allowed for the static release build (a cold build of the
    /// whole package on two busy cores).
    static let staticBuildTimeout = 3600.0
    static let stepTimeout = 300.0

    static let shared: Result<BootArtifacts, VMTestError> = {
        do { return .success(try build()) } catch let error as VMTestError { return .failure(error) } catch {
            return .failure(VMTestError("\(error)"))
        }
    }()

    static var repository: String {
        URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
            .deletingLastPathComponent().deletingLastPathComponent().path
    }

    private static func build() throws -> BootArtifacts {
        for tool in ["qemu-system-x86_64", "swtpm", "cpio", "mkfs.ext4", "nbdcopy", "strip", "bwrap", "setpriv"] { _ = try Tools.path(of: tool) }
        let kernel = try Tools.kernel()
        let repository = repository
        let folder = repository + "/.build/static/vmtests"
        try? FileManager.default.removeItem(atPath: folder)
        try FileManager.default.createDirectory(atPath: folder, withIntermediateDirectories: true)

        var report = try runChecked([repository + "/packaging/build-static"], timeout: staticBuildTimeout)
        let tree = folder + "/root-tree"
        try runChecked([repository + "/packaging/test-root/build", tree], timeout: stepTimeout)

        // A random passphrase, so finding it on the console means it leaked.
        let passphrase = (0..<24).map { _ in String(format: "%02x", UInt8.random(in: 0...255)) }.joined()
        let keyFile = folder + "/TEST-ONLY-key"
        guard FileManager.default.createFile(atPath: keyFile, contents: Data(passphrase.utf8), attributes: [.posixPermissions: 0o600]) else {
            throw VMTestError("cannot write \(keyFile)")
        }
        let pool = folder + "/pristine-pool.img"
        let recoveryFile = folder + "/recovery-key"
        try runChecked(
            [repository + "/packaging/pool-image/build", "--tree", tree, "--output", pool, "--key-file", keyFile,
             "--pool-size", "128M", "--volume", "root", "--volume-size", "64M", "--scrypt-log2n", "10",
             "--recovery-key-out", recoveryFile],
            timeout: stepTimeout)
        let bin = repository + "/.build/static/bin"
        let stage = folder + "/initramfs-stage"
        let initramfs = folder + "/initramfs.img"
        let common = [
            "--kernel-version", kernel.version, "--keyslot", "tpm2", "--on-failure", "poweroff", "--compress", "zstd", "--level", "3",
        ]
        report += try runChecked(
            [repository + "/packaging/initramfs/build", "--output", initramfs, "--stage", stage] + common, timeout: stepTimeout)
        // Another storage domain executable: the same one, one byte longer.
        let changedStorage = folder + "/bulkhead-storaged-changed"
        try FileManager.default.copyItem(atPath: bin + "/bulkhead-storaged", toPath: changedStorage)
        let handle = try FileHandle(forWritingTo: URL(fileURLWithPath: changedStorage))
        try handle.seekToEnd()
        try handle.write(contentsOf: Data([0]))
        try handle.close()
        let changedInitramfs = folder + "/initramfs-changed-storage.img"
        try runChecked(
            [repository + "/packaging/initramfs/build", "--output", changedInitramfs, "--storage-executable", changedStorage] + common,
            timeout: stepTimeout)

        // The tpm2 keyslot, sealed in the TPM state the guest will use, to
        // the PCR 15 the initramfs's launch will produce.
        let tpmState = folder + "/tpm-state"
        try FileManager.default.createDirectory(atPath: tpmState, withIntermediateDirectories: true)
        let enrolled = try withSoftwareTPM(state: tpmState, folder: folder) { tcti in
            try runChecked(
                [bin + "/bulkhead", "keyslot", "add", pool, "--key-file", keyFile, "--tpm2",
                 "--tpm2-predict", stage + "/etc/bulkhead/boot.toml", "--tpm2-predict-root", stage, "--tpm2-device", tcti],
                timeout: stepTimeout)
        }
        report += enrolled
        return BootArtifacts(
            kernel: kernel.path, initramfs: initramfs, changedInitramfs: changedInitramfs, pristinePool: pool, pristineTPM: tpmState,
            passphrase: passphrase, recoveryKey: readText(recoveryFile).trimmingCharacters(in: .whitespacesAndNewlines),
            masterKeyHex: try masterKeyHex(pool: pool, passphrase: passphrase, folder: folder), report: report)
    }

    /// Runs `body` with swtpm serving `state` over TCP on loopback (its TCTI
    /// string), then stops swtpm, which leaves the state for the guest.
    private static func withSoftwareTPM(state: String, folder: String, _ body: (String) throws -> String) throws -> String {
        var lastLog = ""
        for _ in 0..<5 {
            let port = Int.random(in: 20_000...60_000)
            let swtpm = try Child(
                ["swtpm", "socket", "--tpm2", "--tpmstate", "dir=\(state)",
                 "--server", "type=tcp,port=\(port),bindaddr=127.0.0.1", "--ctrl", "type=tcp,port=\(port + 1),bindaddr=127.0.0.1",
                 "--flags", "not-need-init,startup-clear"],
                logPath: folder + "/swtpm-enrol.log")
            defer { swtpm.stop() }
            // A port in use ends swtpm at once; otherwise it listens.
            if swtpm.waitForExit(seconds: 1) != nil {
                lastLog = swtpm.log
                continue
            }
            return try body("swtpm:host=127.0.0.1,port=\(port)")
        }
        throw VMTestError("swtpm did not start for the enrolment:\n\(lastLog)")
    }

    /// The pool's master key in hex, through the engine on a scratch copy.
    private static func masterKeyHex(pool: String, passphrase: String, folder: String) throws -> String {
        let copy = folder + "/master-key-probe.img"
        try FileManager.default.copyItem(atPath: pool, toPath: copy)
        defer { try? FileManager.default.removeItem(atPath: copy) }
        let unlocked = try Pool.unlock(storage: try FileBlockDevice(path: copy), secret: .passphrase(Array(passphrase.utf8)))
        return unlocked.0.secret.withUnsafeBytes { $0.map { String(format: "%02x", $0) }.joined() }
    }
}

/// The external programs and the kernel the VM tests need. A missing one is
/// a failure, never a skip (.ci/run installs them).
enum Tools {
    private static let packages: [String: String] = [
        "qemu-system-x86_64": "qemu-system-x86", "swtpm": "swtpm", "cpio": "cpio",
        "mkfs.ext4": "e2fsprogs", "nbdcopy": "libnbd-bin", "strip": "binutils", "bwrap": "bubblewrap", "setpriv": "util-linux",
    ]

    static func path(of name: String) throws -> String {
        let folders = (ProcessInfo.processInfo.environment["PATH"] ?? "").split(separator: ":").map(String.init)
            + ["/usr/local/sbin", "/usr/local/bin", "/usr/sbin", "/usr/bin", "/sbin", "/bin"]
        for folder in folders where !folder.isEmpty && FileManager.default.isExecutableFile(atPath: folder + "/" + name) {
            return folder + "/" + name
        }
        throw VMTestError("\(name) is missing: apt install \(packages[name] ?? name)")
    }

    /// The newest /boot/vmlinuz-VERSION whose modules are installed
    /// (Debian's linux-image-amd64), or BULKHEAD_VM_KERNEL.
    static func kernel() throws -> (path: String, version: String) {
        let environment = ProcessInfo.processInfo.environment
        if let path = environment["BULKHEAD_VM_KERNEL"], let version = environment["BULKHEAD_VM_KERNEL_VERSION"] {
            return (path, version)
        }
        let versions = ((try? FileManager.default.contentsOfDirectory(atPath: "/boot")) ?? [])
            .filter { $0.hasPrefix("vmlinuz-") }
            .map { String($0.dropFirst("vmlinuz-".count)) }
            .filter { FileManager.default.fileExists(atPath: "/lib/modules/\($0)/modules.dep") }
            .sorted { $0.compare($1, options: .numeric) == .orderedAscending }
        guard let version = versions.last else {
            throw VMTestError("no /boot/vmlinuz-* with its modules in /lib/modules: apt install linux-image-amd64")
        }
        let path = "/boot/vmlinuz-" + version
        guard FileManager.default.isReadableFile(atPath: path) else { throw VMTestError("cannot read \(path)") }
        return (path, version)
    }
}
