#if canImport(Glibc)
import Glibc
#endif
import Foundation
import LaunchMeasurement

/// The root volume attached through the chain and mounted (docs/toolstack.md,
/// "Root handover"). Where the kernel's nbd module is available, nbd-client
/// would connect /dev/nbdN to the volume socket directly; here nbdfuse
/// exposes the export as a file and a loop device makes it a block device.
final class RootAttachment {
    let export: String
    let mountPoint: String
    let device: String
    private let fuseDirectory: String
    private let fusePID: pid_t

    private init(export: String, mountPoint: String, device: String, fuseDirectory: String, fusePID: pid_t) {
        self.export = export
        self.mountPoint = mountPoint
        self.device = device
        self.fuseDirectory = fuseDirectory
        self.fusePID = fusePID
    }

    static func attach(_ request: Supervisor.RootRequest, socket: String, runtime: RuntimeLayout) throws(ToolstackError) -> RootAttachment {
        let fuseDirectory = "\(runtime.root)/root-fuse"
        let pidFile = "\(runtime.root)/nbdfuse.pid"
        unlink(pidFile)
        mkdir(fuseDirectory, 0o700)
        mkdir(request.mountPoint, 0o755)
        let nbdfuse = try ProcessLaunch.findExecutable("nbdfuse")
        let uri = "nbd+unix:///\(request.export)?socket=\(socket)"
        let pid = try ProcessLaunch.spawn(
            executable: nbdfuse, argv: [nbdfuse, "-P", pidFile, fuseDirectory, uri], outputPath: runtime.log("nbdfuse"),
            newSession: true)
        // nbdfuse writes its pid file once the FUSE mount is ready.
        let deadline = monotonicNow() + 15
        while (FileManager.default.contents(atPath: pidFile) ?? Data()).isEmpty {
            if let status = ProcessLaunch.reap(pid) {
                throw ToolstackError("nbdfuse \(describeExit(status)) before mounting \(uri): \(tail(of: runtime.log("nbdfuse")))")
            }
            guard monotonicNow() < deadline else {
                kill(pid, SIGKILL)
                _ = ProcessLaunch.waitForExit(pid, timeout: 5)
                throw ToolstackError("nbdfuse did not mount \(uri) within 15 s")
            }
            usleep(20_000)
        }
        let file = "\(fuseDirectory)/nbd"
        let loop = try ProcessLaunch.run(["losetup", "--find", "--show", file])
        guard loop.succeeded, loop.output.hasPrefix("/dev/") else {
            unmountFuse(fuseDirectory, pid: pid)
            throw ToolstackError("losetup \(file): \(loop.output)")
        }
        let mounted = try ProcessLaunch.run(["mount", loop.output, request.mountPoint], timeout: 120)
        guard mounted.succeeded else {
            _ = try? ProcessLaunch.run(["losetup", "-d", loop.output])
            unmountFuse(fuseDirectory, pid: pid)
            throw ToolstackError("mount \(loop.output) on \(request.mountPoint): \(mounted.output)")
        }
        return RootAttachment(
            export: request.export, mountPoint: request.mountPoint, device: loop.output, fuseDirectory: fuseDirectory, fusePID: pid)
    }

    /// Unmounts, frees the loop device and ends nbdfuse (flushing through
    /// the chain), before the domains stop.
    func detach() {
        var unmounted = false
        for _ in 0..<50 where !unmounted {
            unmounted = (try? ProcessLaunch.run(["umount", mountPoint]))?.succeeded ?? false
            if !unmounted { usleep(100_000) }
        }
        if !unmounted { _ = try? ProcessLaunch.run(["umount", "-l", mountPoint]) }
        _ = try? ProcessLaunch.run(["losetup", "-d", device])
        Self.unmountFuse(fuseDirectory, pid: fusePID)
    }

    private static func unmountFuse(_ directory: String, pid: pid_t) {
        var done = false
        for _ in 0..<50 where !done {
            done = (try? ProcessLaunch.run(["fusermount3", "-u", directory]))?.succeeded ?? false
            if !done { usleep(100_000) }
        }
        if !done { _ = try? ProcessLaunch.run(["fusermount3", "-u", "-z", directory]) }
        if ProcessLaunch.waitForExit(pid, timeout: 10) == nil {
            kill(pid, SIGKILL)
            _ = ProcessLaunch.waitForExit(pid, timeout: 5)
        }
    }
}
