#if canImport(Glibc)
import ProcessSpawn
import Glibc
#endif
import Foundation
import LaunchMeasurement

/// The root volume attached through the chain and mounted (docs/toolstack.md,
/// "Root handover"). With the kernel's NBD driver (`/dev/nbd0` exists), the
/// supervisor connects the device to the volume socket itself
/// (`KernelNBDDevice`: one kernel round trip per request); without it,
/// nbdfuse exposes the export as a file and a loop device makes it a block
/// device.
final class RootAttachment {
    /// The NBD device the kernel driver path uses.
    static let kernelDevice = "/dev/nbd0"

    private enum Backend {
        case kernel(KernelNBDDevice)
        case fuse(directory: String, pid: pid_t)
    }

    let export: String
    let mountPoint: String
    let device: String
    private let backend: Backend

    private init(export: String, mountPoint: String, device: String, backend: Backend) {
        self.export = export
        self.mountPoint = mountPoint
        self.device = device
        self.backend = backend
    }

    /// Attaches the export at `socket` and mounts it; `log` receives what
    /// happens to the device later (the kernel path's serving thread).
    static func attach(
        _ request: Supervisor.RootRequest, socket: String, runtime: RuntimeLayout, log: @escaping @Sendable (String) -> Void
    ) throws(ToolstackError) -> RootAttachment {
        mkdir(request.mountPoint, 0o755)
        let attachment: RootAttachment
        if KernelNBDDevice.available(kernelDevice) {
            let nbd = try KernelNBDDevice.attach(socket: socket, export: request.export, device: kernelDevice) { reason in
                log("CRITICAL: root device \(kernelDevice) stopped serving: \(reason)")
            }
            attachment = RootAttachment(export: request.export, mountPoint: request.mountPoint, device: kernelDevice, backend: .kernel(nbd))
        } else {
            attachment = try attachWithFuse(request, socket: socket, runtime: runtime)
        }
        let mounted = try ProcessLaunch.run(["mount", attachment.device, request.mountPoint], timeout: 120)
        guard mounted.succeeded else {
            attachment.release()
            throw ToolstackError("mount \(attachment.device) on \(request.mountPoint): \(mounted.output)")
        }
        return attachment
    }

    private static func attachWithFuse(_ request: Supervisor.RootRequest, socket: String, runtime: RuntimeLayout) throws(ToolstackError) -> RootAttachment {
        let fuseDirectory = "\(runtime.root)/root-fuse"
        let pidFile = "\(runtime.root)/nbdfuse.pid"
        unlink(pidFile)
        mkdir(fuseDirectory, 0o700)
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
        return RootAttachment(
            export: request.export, mountPoint: request.mountPoint, device: loop.output, backend: .fuse(directory: fuseDirectory, pid: pid))
    }

    /// Unmounts, then releases the device (flushing through the chain),
    /// before the domains stop.
    func detach() {
        var unmounted = false
        for _ in 0..<50 where !unmounted {
            unmounted = (try? ProcessLaunch.run(["umount", mountPoint]))?.succeeded ?? false
            if !unmounted { usleep(100_000) }
        }
        if !unmounted {
            // After the initramfs hands over, root is mounted at the real
            // root's /, not here: the device is still in use and stays.
            if case .kernel = backend {
                Supervisor.log("root: \(device) is not mounted on \(mountPoint) any more (the real root uses it); left attached")
                return
            }
            _ = try? ProcessLaunch.run(["umount", "-l", mountPoint])
        }
        release()
    }

    /// Disconnects the NBD device, or frees the loop device and ends nbdfuse.
    private func release() {
        switch backend {
        case .kernel(let nbd):
            nbd.detach()
        case .fuse(let directory, let pid):
            _ = try? ProcessLaunch.run(["losetup", "-d", device])
            Self.unmountFuse(directory, pid: pid)
        }
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
