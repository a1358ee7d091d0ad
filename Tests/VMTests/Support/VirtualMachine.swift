import Foundation
import Testing

/// One boot of the Debian kernel with the Bulkhead initramfs under
/// qemu-system-x86_64 with software emulation (TCG: a KVM guest hangs on
/// this host), the pool as its virtio disk and a software TPM (swtpm)
/// attached for the TPM unseal that comes later. Its own scratch folder
/// holds the pool copy, the TPM state and the serial console log; the
/// folder goes away with `remove()`.
final class VirtualMachine {
    /// Bound on one boot, from qemu's start to its exit.
    static let bootTimeout = 240.0
    /// The initramfs unpacks to about 130 MiB (the static executables carry
    /// Foundation's ICU data) next to its compressed copy; 512 MiB is too
    /// little for the kernel to unpack it.
    static let memory = "1G"
    static let cpus = "2"

    let folder: String
    var pool: String { folder + "/pool.img" }
    var serialLog: String { folder + "/serial.log" }
    var tpmFolder: String { folder + "/tpm" }
    var tpmSocket: String { tpmFolder + "/swtpm.sock" }

    init() throws {
        var template = Array("/tmp/bhvm-XXXXXX".utf8CString)
        guard let made = mkdtemp(&template) else { throw VMTestError("mkdtemp: \(String(cString: strerror(errno)))") }
        folder = String(cString: made)
        try FileManager.default.createDirectory(atPath: tpmFolder, withIntermediateDirectories: true)
    }

    func remove() { try? FileManager.default.removeItem(atPath: folder) }

    /// How a boot went: the console, whether qemu ended by itself, and when
    /// `marker` first appeared on the console (seconds after qemu started).
    struct Boot {
        let console: String
        let qemuStatus: Int32?
        let seconds: Double
        let markerSeconds: Double?
    }

    /// Boots once and waits (bounded) for the guest to power off.
    func boot(_ artifacts: BootArtifacts, marker: String) throws -> Boot {
        let swtpm = try Child(
            ["swtpm", "socket", "--tpm2", "--tpmstate", "dir=\(tpmFolder)", "--ctrl", "type=unixio,path=\(tpmSocket)",
             "--log", "file=\(tpmFolder)/swtpm.log"],
            logPath: folder + "/swtpm.out")
        defer { swtpm.stop() }
        try waitFor(seconds: 30, "swtpm's socket \(tpmSocket)") { FileManager.default.fileExists(atPath: tpmSocket) || swtpm.status != nil }
        guard swtpm.status == nil else { throw VMTestError("swtpm ended at start:\n\(swtpm.log)") }

        let qemu = try Child(
            ["qemu-system-x86_64", "-accel", "tcg", "-smp", Self.cpus, "-m", Self.memory,
             "-nographic", "-no-reboot", "-monitor", "none", "-nic", "none",
             "-kernel", artifacts.kernel, "-initrd", artifacts.initramfs,
             "-append", "console=ttyS0 panic=-1 bulkhead.on_failure=poweroff",
             "-serial", "file:\(serialLog)",
             "-drive", "file=\(pool),format=raw,if=virtio",
             "-chardev", "socket,id=chrtpm,path=\(tpmSocket)",
             "-tpmdev", "emulator,id=tpm0,chardev=chrtpm", "-device", "tpm-tis,tpmdev=tpm0"],
            logPath: folder + "/qemu.out")
        defer { qemu.stop(grace: 2) }
        var markerSeconds: Double?
        let deadline = Date().addingTimeInterval(Self.bootTimeout)
        while qemu.status == nil && Date() < deadline {
            if markerSeconds == nil, readText(serialLog).contains(marker) {
                markerSeconds = Date().timeIntervalSince(qemu.started)
            }
            usleep(100_000)
        }
        let status = qemu.status
        let seconds = Date().timeIntervalSince(qemu.started)
        let console = readText(serialLog)
        if markerSeconds == nil, console.contains(marker) { markerSeconds = seconds }
        if status == nil {
            Issue.record("the guest did not power off within \(Int(Self.bootTimeout)) s; console:\n\(lastPart(console))")
        } else if status != 0 {
            Issue.record("qemu exited with status \(status!): \(lastPart(qemu.log))")
        }
        return Boot(console: console, qemuStatus: status, seconds: seconds, markerSeconds: markerSeconds)
    }

    private func waitFor(seconds: Double, _ what: String, _ condition: () -> Bool) throws {
        let deadline = Date().addingTimeInterval(seconds)
        while !condition() {
            guard Date() < deadline else { throw VMTestError("timed out after \(Int(seconds)) s waiting for \(what)") }
            usleep(20_000)
        }
    }
}
