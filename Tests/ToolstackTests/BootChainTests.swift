import ProcessSpawn
import Foundation
import LaunchMeasurement
import TestSupport
import Testing
import Toolstack

/// The whole chain from a manifest, sandboxed: ext4 on a volume through
/// the crypt and storage domains, across stops and boots, and root handover.
@Suite("bulkhead boot: the whole chain") struct BootChainTests {
    @Test("boot, ext4 through the chain as root (--root --mount), files written, stop, boot again, files read back")
    func ext4AcrossBoots() throws {
        try requireBootPrivileges()
        _ = try tool("nbdfuse", package: "nbdfuse")
        _ = try tool("fusermount3", package: "fuse3")
        _ = try tool("mkfs.ext4", package: "e2fsprogs")
        let fixture = try BootFixture()
        let mountPoint = try fixture.scratch.folder("sysroot")
        fixture.mountPoints.append(mountPoint)

        // First boot: make the file system through the chain.
        try fixture.boot()
        let status = try fixture.status()
        #expect(status.state == "running")
        #expect(status.domains.map(\.state) == ["running", "running"])
        #expect(status.domains.map(\.uid) == [UInt32(BootFixture.storageUID), UInt32(BootFixture.cryptUID)])
        #expect(status.exports.map(\.volume) == ["vm1"])
        let fuse = try fixture.scratch.folder("fuse")
        let nbdfuse = try ProcessLaunch.spawn(
            executable: try tool("nbdfuse", package: "nbdfuse"),
            argv: ["nbdfuse", "-P", fixture.scratch.file("nbdfuse.pid"), fuse, fixture.uri("vm1")])
        defer {
            if isMounted(fuse) { _ = try? run(["fusermount3", "-u", "-z", fuse]) }
            if ProcessLaunch.waitForExit(nbdfuse, timeout: 10) == nil {
                kill(nbdfuse, SIGKILL)
                _ = ProcessLaunch.waitForExit(nbdfuse, timeout: 5)
            }
        }
        #expect(eventually(timeout: 15) { (FileManager.default.contents(atPath: fixture.scratch.file("nbdfuse.pid")) ?? Data()).count > 0 })
        try runChecked(["mkfs.ext4", "-q", "-F", fuse + "/nbd"])
        try runChecked(["fusermount3", "-u", fuse])
        #expect(ProcessLaunch.waitForExit(nbdfuse, timeout: 10) == 0)
        try fixture.stop()
        #expect(try fixture.status().state == "stopped")

        // Second boot: root handover, write files.
        try fixture.boot(["--root", "vm1", "--mount", mountPoint])
        #expect(isMounted(mountPoint))
        #expect(try fixture.status().root?.mountPoint == mountPoint)
        var files: [String: Data] = [:]
        for (index, size) in [0, 1, 4097, 300_000, 3 << 20].enumerated() {
            let data = Data((0..<size).map { _ in UInt8.random(in: 0...255) })
            let path = "/file\(index)"
            try data.write(to: URL(fileURLWithPath: mountPoint + path))
            files[path] = data
        }
        try fixture.stop()
        #expect(!isMounted(mountPoint), "stop unmounts root before stopping the domains")

        // Third boot: read them back.
        try fixture.boot(["--root", "vm1", "--mount", mountPoint])
        for (path, data) in files.sorted(by: { $0.key < $1.key }) {
            let back = try Data(contentsOf: URL(fileURLWithPath: mountPoint + path))
            #expect(back == data, "\(path) differs after stop and boot")
        }
        try fixture.stop()
        #expect(!isMounted(mountPoint))
        let check = try run(["fsck.ext4", "-n", "-f", fixture.image])
        #expect(!check.succeeded, "the image holds ciphertext, not an ext4 file system")
    }

    @Test("kill -9 of the storage domain every few seconds under fio --verify=crc32c: no fio error, restarts counted")
    func storageRestartsUnderFio() throws {
        try requireBootPrivileges()
        let fio = try tool("fio", package: "fio")
        let fixture = try BootFixture()
        try fixture.boot()
        let log = fixture.scratch.file("fio.log")
        let job = try ProcessLaunch.spawn(
            executable: fio,
            argv: [
                fio, "--name=verify", "--ioengine=nbd", "--uri=\(fixture.uri("vm1"))", "--rw=randwrite", "--bs=4k",
                // Several passes, each written then verified, so the workload
                // outlasts a few kills however fast the chain is.
                "--size=64M", "--loops=4", "--iodepth=8", "--verify=crc32c", "--verify_fatal=1", "--verify_state_save=0",
                "--output-format=normal",
            ], outputPath: log)
        defer {
            if ProcessLaunch.reap(job) == nil {
                kill(job, SIGKILL)
                _ = ProcessLaunch.waitForExit(job, timeout: 10)
            }
        }
        var kills = 0
        var status: Int32?
        let deadline = monotonicNow() + 240
        while status == nil, monotonicNow() < deadline {
            usleep(2_000_000)
            status = ProcessLaunch.reap(job)
            guard status == nil else { break }
            let storage = try fixture.domain(.storage)
            if let pid = storage.pid, storage.state == "running" {
                kill(pid, SIGKILL)
                kills += 1
            }
        }
        if status == nil { status = ProcessLaunch.waitForExit(job, timeout: 120) }
        let output = (try? String(contentsOfFile: log, encoding: .utf8)) ?? ""
        #expect(status == 0, "fio: \(output)\n\(fixture.logs)")
        #expect(output.contains("err= 0"), "\(output)")
        #expect(!output.contains("verify: bad"), "\(output)")
        #expect(kills >= 2, "the workload must outlast a few kills (\(kills))")
        #expect(eventually(timeout: 30) { (try? fixture.domain(.storage))?.state == "running" })
        let storage = try fixture.domain(.storage)
        #expect(storage.restarts == kills, "status: \(storage)")
        #expect(storage.lastExit == "killed by signal 9 (SIGKILL)")
        #expect(try fixture.domain(.crypt).restarts == 0)
        try fixture.stop()
    }

    @Test("a crashed crypt domain is reported loudly and restarted; its volume is served again")
    func cryptRestart() throws {
        try requireBootPrivileges()
        let fixture = try BootFixture()
        try fixture.boot()
        let before = try fixture.domain(.crypt)
        kill(try #require(before.pid), SIGKILL)
        #expect(eventually(timeout: 60) {
            guard let crypt = try? fixture.domain(.crypt) else { return false }
            return crypt.state == "running" && crypt.restarts == 1
        }, "\(fixture.logs)")
        let log = (try? String(contentsOfFile: "\(fixture.runtimeDirectory)/log/supervisor.log", encoding: .utf8)) ?? ""
        #expect(log.contains("CRITICAL: CRYPT DOMAIN CRASHED: the crypt domain (pid \(before.pid!)) killed by signal 9 (SIGKILL)"), "\(log)")
        let info = try run([try tool("nbdinfo", package: "libnbd-bin"), "--size", fixture.uri("vm1")])
        #expect(info.output == String(128 << 20), "\(info.output)")
        #expect(try fixture.domain(.storage).restarts == 0)
        try fixture.stop()
    }
}
