import Foundation
import TestScratch
import Testing

/// A whole file system on an export: nbdfuse exposes the export as a file,
/// the kernel loop-mounts ext4 from it, e2fsck judges the result.
@Suite("ext4 over nbdfuse") struct Ext4OverNbdfuseTests {
    static let size = 64 * mebibyte

    @Test("mkfs.ext4, loop mount, write files, fsck -n clean, remount and read them back")
    func ext4RoundTrip() throws {
        try Self.requirePrivileges()
        let scratch = try Scratch()
        defer { scratch.remove() }
        let disk = Export(name: "disk", path: scratch.file("disk.img"))
        try makeSparseFile(disk.path, size: Self.size)
        let server = try StorageServer(exports: [disk], in: scratch)
        defer { server.stop() }

        let fuse = try FuseMount(uri: server.uri("disk"), in: scratch)
        let mountPoint = try scratch.folder("mnt")
        var mounted = false
        defer {
            if mounted, (try? unmount(mountPoint, server)) == nil { _ = try? run(["umount", "-l", mountPoint]) }
            fuse.unmount()
        }

        server.expectSuccess(try run(["mkfs.ext4", "-q", "-F", fuse.file], timeout: 180))
        try mount(fuse.file, at: mountPoint, server)
        mounted = true

        // Files of assorted sizes, some crossing many 4k blocks, in nested folders.
        var files: [String: Data] = [:]
        try FileManager.default.createDirectory(atPath: mountPoint + "/a/b", withIntermediateDirectories: true)
        for (index, size) in [0, 1, 4095, 4096, 70_000, 1 << 20, 3 << 20, 5_000_001].enumerated() {
            let path = (index % 2 == 0 ? "/a/" : "/a/b/") + "file\(index)"
            let data = try randomBytes(size)
            try writeFile(mountPoint + path, data)
            files[path] = data
        }
        try unmount(mountPoint, server)
        mounted = false
        let check = try run(["e2fsck", "-n", "-f", fuse.file], timeout: 180)
        server.expectSuccess(check)
        #expect(!check.output.contains("FILE SYSTEM WAS MODIFIED"), "\(check)")

        try mount(fuse.file, at: mountPoint, server)
        mounted = true
        for (path, data) in files {
            let readBack = try readFile(mountPoint + path)
            #expect(firstDifference(readBack, data) == nil, "\(path) differs after remount")
        }
        try unmount(mountPoint, server)
        mounted = false
        fuse.unmount()
        #expect(fuse.exitStatus == 0, "nbdfuse exit status; its log:\n\(tail(fuse.process.log))")

        // With FUSE gone the server has had every write: the backing file alone is a clean file system.
        let direct = try run(["e2fsck", "-n", "-f", disk.path], timeout: 180)
        #expect(direct.status == 0, "\(direct)")
    }

    private func mount(_ file: String, at mountPoint: String, _ server: StorageServer) throws {
        let result = try run(["mount", "-o", "loop", "-t", "ext4", file, mountPoint])
        guard result.status == 0 else {
            throw InteropError.setupFailed("loop mount failed: \(result)\n--- server log ---\n\(tail(server.log, limit: 2000))")
        }
    }

    /// Unmounts `mountPoint`, retrying for a while if it is busy.
    private func unmount(_ mountPoint: String, _ server: StorageServer) throws {
        var result = try run(["umount", mountPoint])
        for _ in 0..<50 where result.status != 0 && result.stderr.contains("busy") {
            usleep(100_000)
            result = try run(["umount", mountPoint])
        }
        guard result.status == 0 else {
            throw InteropError.setupFailed("unmount failed: \(result)\n--- server log ---\n\(tail(server.log, limit: 2000))")
        }
    }

    /// The test needs root (mount), FUSE and loop devices; without them it
    /// fails with the reason, it never skips.
    static func requirePrivileges() throws {
        guard getuid() == 0 else { throw InteropError.notRoot(why: "mount -o loop needs root (CI runs as root)") }
        guard FileManager.default.fileExists(atPath: "/dev/fuse") else {
            throw InteropError.missingDevice(path: "/dev/fuse", why: "nbdfuse needs FUSE (modprobe fuse, or give the container /dev/fuse)")
        }
        guard FileManager.default.fileExists(atPath: "/dev/loop-control") else {
            throw InteropError.missingDevice(path: "/dev/loop-control", why: "mount -o loop needs loop devices (modprobe loop)")
        }
    }
}

/// nbdfuse serving one export as the file `<folder>/nbd`; `unmount` undoes it
/// and stops nbdfuse by pid.
final class FuseMount {
    let folder: String
    let process: ChildProcess
    var file: String { folder + "/nbd" }
    private(set) var exitStatus: Int32?
    private var mounted = true

    init(uri: String, in scratch: Scratch) throws {
        folder = try scratch.folder("fuse")
        let pidFile = scratch.file("nbdfuse.pid")
        _ = try Tools.path(of: "fusermount3")
        let logPath = scratch.file("nbdfuse.log")
        process = try ChildProcess(["nbdfuse", "-P", pidFile, folder, uri], outputPath: logPath, errorPath: logPath)
        // nbdfuse writes its pid file once the mount is ready.
        let deadline = Date().addingTimeInterval(10)
        while (FileManager.default.contents(atPath: pidFile) ?? Data()).isEmpty {
            if let status = process.status {
                mounted = false
                throw InteropError.setupFailed("nbdfuse exited with status \(status) before mounting:\n\(tail(process.log))")
            }
            if Date() > deadline {
                unmount()
                throw InteropError.setupFailed("nbdfuse did not mount \(folder) within 10 s:\n\(tail(process.log))")
            }
            usleep(20_000)
        }
    }

    /// Unmounts (retrying while the loop device lets go of the file), then
    /// waits for nbdfuse to exit, killing it after a bound.
    func unmount() {
        if mounted {
            mounted = false
            var done = false
            for _ in 0..<50 where !done {
                done = (try? run(["fusermount3", "-u", folder]))?.status == 0
                if !done { usleep(100_000) }
            }
            if !done { _ = try? run(["fusermount3", "-u", "-z", folder]) }
        }
        if exitStatus == nil {
            exitStatus = process.waitForExit(seconds: 10) ?? process.stop().status
        }
    }
}
