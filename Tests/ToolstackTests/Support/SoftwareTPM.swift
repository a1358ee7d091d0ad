import Foundation
import Sockets
import TestSupport
import Toolstack

/// A real swtpm on a private loopback port pair with its own state folder,
/// powered and started up, stopped by pid.
final class SoftwareTPM {
    let scratch: Scratch
    private(set) var pid: pid_t = 0
    private(set) var port: UInt16 = 0

    var tcti: String { "swtpm:host=127.0.0.1,port=\(port)" }

    init() throws {
        scratch = try Scratch()
        try start()
    }

    /// Stops and starts again on the same state: the power cycle of a
    /// reboot (PCRs back at their reset values, seeds and NV kept).
    func reboot() throws {
        stop()
        try start()
    }

    private func start() throws {
        let swtpm = try tool("swtpm", package: "swtpm")
        for _ in 0..<8 {
            port = UInt16.random(in: 20_000...59_998)
            let log = scratch.file("swtpm.log")
            pid = try ProcessLaunch.spawn(executable: swtpm, argv: [
                swtpm, "socket", "--tpm2",
                "--server", "type=tcp,port=\(port),bindaddr=127.0.0.1",
                "--ctrl", "type=tcp,port=\(port + 1),bindaddr=127.0.0.1",
                "--tpmstate", "dir=\(scratch.path)", "--flags", "not-need-init,startup-clear",
                "--log", "file=\(log),level=1",
            ])
            let ready = eventually(timeout: 10) {
                if ProcessLaunch.reap(pid) != nil { return true }
                return (try? Socket.connect(to: .tcp(host: "127.0.0.1", port: port))) != nil
            }
            if ready, kill(pid, 0) == 0, ProcessLaunch.reap(pid) == nil { return }
            stop()
        }
        throw TestFailure("swtpm did not start")
    }

    func stop() {
        guard pid > 0 else { return }
        kill(pid, SIGTERM)
        if ProcessLaunch.waitForExit(pid, timeout: 5) == nil {
            kill(pid, SIGKILL)
            _ = ProcessLaunch.waitForExit(pid, timeout: 5)
        }
        pid = 0
    }

    deinit { stop() }
}
