import Foundation
import TestScratch
import Testing

/// A real file system on a volume: nbdfuse exposes the export as a file,
/// the kernel loop-mounts ext4 from it, e2fsck judges the result.
@Suite("ext4 on a volume") struct Ext4Tests {
    @Test("nbdfuse + mkfs.ext4 + loop mount: files, fsck.ext4 -n clean, remount and recheck")
    func ext4OverNbdfuse() throws {
        try Tools.requireMountPrivileges()
        let chain = try Chain()
        defer { chain.shutdown() }
        let fuse = try FuseExport(uri: chain.uri("vm1"), in: chain.scratch)
        let mountPoint = try chain.scratch.folder("mnt")
        var mounted = false
        defer {
            if mounted, (try? unmount(mountPoint)) == nil { _ = try? run(["umount", "-l", mountPoint]) }
            fuse.unmount()
        }

        try runChecked(["mkfs.ext4", "-q", "-F", fuse.file], timeout: 120)
        try mount(fuse.file, at: mountPoint)
        mounted = true
        var files: [String: Data] = [:]
        try FileManager.default.createDirectory(atPath: mountPoint + "/d/e", withIntermediateDirectories: true)
        for (index, size) in [0, 1, 4095, 4096, 4097, 100_000, 1 << 20, 5 * mebibyte + 7].enumerated() {
            let path = (index % 2 == 0 ? "/d/" : "/d/e/") + "f\(index)"
            let data = randomData(size)
            try writeFile(mountPoint + path, data)
            files[path] = data
        }
        let sums = try runChecked(["sh", "-c", "cd \(mountPoint) && sha256sum d/f* d/e/f*"])
        try unmount(mountPoint)
        mounted = false

        let check = try run(["fsck.ext4", "-n", "-f", fuse.file], timeout: 120)
        #expect(check.succeeded, "\(check)\n\(chain.logs)")
        #expect(!check.output.contains("FILE SYSTEM WAS MODIFIED"), "\(check)")

        try mount(fuse.file, at: mountPoint)
        mounted = true
        for (path, data) in files.sorted(by: { $0.key < $1.key }) {
            let back = try readFile(mountPoint + path)
            #expect(firstDifference(back, data) == nil, "\(path) differs after the remount")
        }
        let again = try runChecked(["sh", "-c", "cd \(mountPoint) && sha256sum d/f* d/e/f*"])
        #expect(again.output == sums.output)
        try unmount(mountPoint)
        mounted = false
        fuse.unmount()
        #expect(fuse.exitStatus == 0, "nbdfuse: \(lastPart(fuse.process.log))")

        // nbdfuse has gone; after a cryptd restart the volume alone is still a clean file system.
        #expect(chain.stopCryptd() == 0)
        try chain.startCryptd()
        let copy = chain.scratch.file("vm1.raw")
        try runChecked(["nbdcopy", chain.uri("vm1"), copy], timeout: 120)
        let direct = try run(["fsck.ext4", "-n", "-f", copy], timeout: 120)
        #expect(direct.succeeded, "\(direct)")
    }

    private func mount(_ file: String, at point: String) throws {
        let result = try run(["mount", "-o", "loop", "-t", "ext4", file, point])
        guard result.succeeded else { throw ChainError.setup("loop mount failed: \(result)") }
    }

    /// Unmounts, retrying for a while if the mount is busy.
    private func unmount(_ point: String) throws {
        var result = try run(["umount", point])
        for _ in 0..<50 where !result.succeeded && result.output.contains("busy") {
            usleep(100_000)
            result = try run(["umount", point])
        }
        guard result.succeeded else { throw ChainError.setup("umount failed: \(result)") }
    }
}

/// nbdfuse serving one export as the file `FOLDER/nbd`. `unmount` undoes it
/// and waits for nbdfuse to exit (killing it by pid after a bound).
final class FuseExport {
    let folder: String
    let process: ChildProcess
    var file: String { folder + "/nbd" }
    private(set) var exitStatus: Int32?
    private var mounted = true

    init(uri: String, in scratch: Scratch) throws {
        folder = try scratch.folder("fuse")
        _ = try Tools.path(of: "fusermount3")
        let pidFile = scratch.file("nbdfuse.pid")
        process = try ChildProcess(["nbdfuse", "-P", pidFile, folder, uri], logPath: scratch.file("nbdfuse.log"))
        // nbdfuse writes its pid file once the mount is ready.
        let deadline = Date().addingTimeInterval(15)
        while (FileManager.default.contents(atPath: pidFile) ?? Data()).isEmpty {
            if let status = process.status {
                mounted = false
                throw ChainError.setup("nbdfuse exited with status \(status) before mounting: \(lastPart(process.log))")
            }
            if Date() >= deadline {
                unmount()
                throw ChainError.setup("nbdfuse did not mount \(folder) within 15 s: \(lastPart(process.log))")
            }
            usleep(20_000)
        }
    }

    func unmount() {
        if mounted {
            mounted = false
            var done = false
            for _ in 0..<50 where !done {
                done = (try? run(["fusermount3", "-u", folder]))?.succeeded ?? false
                if !done { usleep(100_000) }
            }
            if !done { _ = try? run(["fusermount3", "-u", "-z", folder]) }
        }
        if exitStatus == nil { exitStatus = process.waitForExit(seconds: 10) ?? process.stop(grace: 5).status }
    }
}
