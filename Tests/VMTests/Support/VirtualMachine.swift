import Foundation
import Testing

/// One boot of the Debian kernel with a Bulkhead initramfs under
/// qemu-system-x86_64 with software emulation (TCG: a KVM guest hangs on
/// this host), the pool as its virtio disk and a software TPM (swtpm, on a
/// copy of the TPM state the pool's tpm2 keyslot was enrolled in) as a TIS
/// device. Its own scratch folder holds the pool copy, the TPM state and the
/// serial console log; the folder goes away with `remove()`.
final class VirtualMachine {
    /// Bound on one boot, from qemu's start to its exit.
    static let bootTimeout = 240.0
    /// The initramfs unpacks to about 200 MiB (each executable carries
    /// Foundation's ICU data) next to its compressed copy, and stays in
    /// memory under the real root; 512 MiB is too little.
    static let memory = "1G"
    static let cpus = "2"

    let folder: String
    var pool: String { folder + "/pool.img" }
    var serialLog: String { folder + "/serial.log" }
    var serialSocket: String { folder + "/serial.sock" }
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

    /// Boots `initramfs` once and waits (bounded) for the guest to power
    /// off. With `answer`, types `answer.text` on the serial console once
    /// `answer.prompt` appears there.
    func boot(
        _ artifacts: BootArtifacts, initramfs: String, marker: String, answer: (prompt: String, text: String)? = nil
    ) throws -> Boot {
        for item in try FileManager.default.contentsOfDirectory(atPath: artifacts.pristineTPM) {
            try FileManager.default.copyItem(atPath: artifacts.pristineTPM + "/" + item, toPath: tpmFolder + "/" + item)
        }
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
             "-kernel", artifacts.kernel, "-initrd", initramfs,
             "-append", "console=ttyS0 panic=-1 bulkhead.on_failure=poweroff",
             "-chardev", "socket,id=serial0,path=\(serialSocket),server=on,wait=on", "-serial", "chardev:serial0",
             "-drive", "file=\(pool),format=raw,if=virtio",
             "-chardev", "socket,id=chrtpm,path=\(tpmSocket)",
             "-tpmdev", "emulator,id=tpm0,chardev=chrtpm", "-device", "tpm-tis,tpmdev=tpm0"],
            logPath: folder + "/qemu.out")
        defer { qemu.stop(grace: 2) }
        let console = try SerialConsole(socket: serialSocket, logPath: serialLog, seconds: 30)
        var markerSeconds: Double?
        var answered = false
        let deadline = Date().addingTimeInterval(Self.bootTimeout)
        while qemu.status == nil && Date() < deadline {
            let text = console.text
            if markerSeconds == nil, text.contains(marker) {
                markerSeconds = Date().timeIntervalSince(qemu.started)
            }
            if let answer, !answered, text.contains(answer.prompt) {
                console.type(answer.text + "\n")
                answered = true
            }
            usleep(100_000)
        }
        let status = qemu.status
        let seconds = Date().timeIntervalSince(qemu.started)
        // What the guest wrote last may still be on its way through the socket.
        usleep(200_000)
        let text = console.text
        if markerSeconds == nil, text.contains(marker) { markerSeconds = seconds }
        if status == nil {
            Issue.record("the guest did not power off within \(Int(Self.bootTimeout)) s; console:\n\(lastPart(text))")
        } else if status != 0 {
            Issue.record("qemu exited with status \(status!): \(lastPart(qemu.log))")
        }
        return Boot(console: text, qemuStatus: status, seconds: seconds, markerSeconds: markerSeconds)
    }

    private func waitFor(seconds: Double, _ what: String, _ condition: () -> Bool) throws {
        let deadline = Date().addingTimeInterval(seconds)
        while !condition() {
            guard Date() < deadline else { throw VMTestError("timed out after \(Int(seconds)) s waiting for \(what)") }
            usleep(20_000)
        }
    }
}
