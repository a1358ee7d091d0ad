import Foundation

/// What every boot shares, built once per test run by the packaging scripts
/// a user runs (docs/boot.md): the static executables, the test root tree, a
/// pristine pool image holding it, the initramfs, and the test passphrase.
/// They live under .build/static/vmtests, rebuilt on each run.
struct BootArtifacts: Sendable {
    let kernel: String
    let initramfs: String
    /// The pool as packaging/pool-image/build left it; boots use copies.
    let pristinePool: String
    let keyFile: String
    /// The passphrase and recovery key, which must never reach the console.
    let passphrase: String
    let recoveryKey: String
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
        for tool in ["qemu-system-x86_64", "swtpm", "cpio", "mkfs.ext4", "nbdcopy", "strip"] { _ = try Tools.path(of: tool) }
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
        let initramfs = folder + "/initramfs.img"
        report += try runChecked(
            [repository + "/packaging/initramfs/build", "--output", initramfs, "--kernel-version", kernel.version,
             "--test-key-file", keyFile, "--on-failure", "poweroff", "--compress", "zstd", "--level", "3"],
            timeout: stepTimeout)
        return BootArtifacts(
            kernel: kernel.path, initramfs: initramfs, pristinePool: pool, keyFile: keyFile, passphrase: passphrase,
            recoveryKey: readText(recoveryFile).trimmingCharacters(in: .whitespacesAndNewlines), report: report)
    }
}

/// The external programs and the kernel the VM tests need. A missing one is
/// a failure, never a skip (.ci/run installs them).
enum Tools {
    private static let packages: [String: String] = [
        "qemu-system-x86_64": "qemu-system-x86", "swtpm": "swtpm", "cpio": "cpio",
        "mkfs.ext4": "e2fsprogs", "nbdcopy": "libnbd-bin", "strip": "binutils",
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
