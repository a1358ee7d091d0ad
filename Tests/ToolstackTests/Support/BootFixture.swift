import Foundation
import LaunchMeasurement
import Toolstack

/// A formatted pool in an image file, a key file, a manifest over them and
/// the commands to boot, inspect and stop it. Cleans up what it started:
/// stops a running supervisor, kills leftover domains by pid, unmounts.
final class BootFixture {
    static let storageUID = 64510
    static let cryptUID = 64511

    let scratch: Scratch
    let image: String
    let keyFile: String
    let stateDirectory: String
    let runtimeDirectory: String
    let manifestPath: String
    let volumes: [String]
    var tcti = "none"
    /// Unlock with the key file (false: the pool's tpm2 keyslots).
    var keyFileKeyslot = true
    /// Run the domains in their sandboxes (a swtpm over TCP is out of a sandboxed domain's reach).
    var sandbox = true
    var storageExecutable: String
    var mountPoints: [String] = []

    /// Formats a pool of `size` bytes with `volumes` of `volumeSize` bytes.
    init(volumes: [String] = ["vm1"], size: Int = 256 << 20, volumeSize: Int = 128 << 20, tcti: String = "none") throws {
        scratch = try Scratch()
        image = scratch.file("pool.img")
        keyFile = scratch.file("pool.key")
        stateDirectory = scratch.file("state")
        runtimeDirectory = scratch.file("run")
        manifestPath = scratch.file("boot.toml")
        self.volumes = volumes
        self.tcti = tcti
        storageExecutable = try built("bulkhead-storaged")
        guard FileManager.default.createFile(atPath: image, contents: nil), truncate(image, off_t(size)) == 0 else {
            throw TestFailure("cannot create \(image)")
        }
        try Data("correct horse battery staple".utf8).write(to: URL(fileURLWithPath: keyFile))
        let bulkhead = try built("bulkhead")
        try runChecked([
            bulkhead, "format", image, "--key-file", keyFile, "--scrypt-log2n", "10", "--state-dir", stateDirectory,
            "--recovery-key-out", scratch.file("recovery.key"),
        ])
        for volume in volumes {
            try runChecked([bulkhead, "volume", "create", image, volume, "--size", String(volumeSize), "--key-file", keyFile, "--state-dir", stateDirectory])
        }
        try writeManifest()
    }

    deinit { cleanUp() }

    func manifestText() throws -> String {
        """
        # a test manifest
        runtime_dir = "\(runtimeDirectory)"
        tpm_tcti = "\(tcti)"
        sandbox = \(sandbox)

        [restart]
        initial_delay_ms = 100
        max_delay_ms = 1000

        [storage]
        executable = "\(storageExecutable)"
        user = \(Self.storageUID)

        [[storage.disks]]
        name = "pool"
        path = "\(image)"

        [crypt]
        executable = "\(try built("bulkhead-cryptd"))"
        user = \(Self.cryptUID)
        pool = "pool"
        \(keyFileKeyslot ? "keyslot = \"key-file\"\nkey_file = \"\(keyFile)\"" : "keyslot = \"tpm2\"")
        state_dir = "\(stateDirectory)"
        retry_window = 60

        """ + volumes.map { "[[exports]]\nvolume = \"\($0)\"\nconsumers = [0]\n" }.joined(separator: "\n")
    }

    func writeManifest() throws {
        try manifestText().write(toFile: manifestPath, atomically: true, encoding: .utf8)
    }

    func manifest() throws -> BootManifest { try ManifestFile.load(manifestPath) }

    /// Names a copy of the storage executable with one byte appended (another
    /// build, as far as measurement goes) and rewrites the manifest, for a
    /// fresh boot (the old runtime folder is removed).
    func useModifiedStorageExecutable() throws {
        let copy = scratch.file("bulkhead-storaged-modified")
        var bytes = try Data(contentsOf: URL(fileURLWithPath: storageExecutable))
        bytes.append(0)
        try bytes.write(to: URL(fileURLWithPath: copy))
        chmod(copy, 0o755)
        storageExecutable = copy
        try writeManifest()
        try FileManager.default.removeItem(atPath: runtimeDirectory)
    }

    func socket(_ volume: String) -> String { "\(runtimeDirectory)/volumes/\(volume).sock" }
    func uri(_ volume: String) -> String { "nbd+unix:///\(volume)?socket=\(socket(volume))" }

    /// `bulkhead ARGS --manifest M`.
    func bulkhead(_ arguments: [String], timeout: Double = 330) throws -> ProcessLaunch.Outcome {
        try run([try built("bulkhead")] + arguments + ["--manifest", manifestPath], timeout: timeout)
    }

    /// Boots; fails the test with the supervisor's log if it does not.
    func boot(_ extra: [String] = []) throws {
        let outcome = try bulkhead(["boot"] + extra)
        guard outcome.succeeded else { throw TestFailure("bulkhead boot failed: \(outcome.output)\n\(logs)") }
    }

    func stop() throws {
        let outcome = try bulkhead(["boot", "--stop"], timeout: 200)
        guard outcome.succeeded else { throw TestFailure("bulkhead boot --stop failed: \(outcome.output)\n\(logs)") }
    }

    func status() throws -> SupervisorStatus {
        let outcome = try bulkhead(["status", "--json"])
        guard outcome.succeeded else { throw TestFailure("bulkhead status failed: \(outcome.output)") }
        let decoder = JSONDecoder()
        decoder.keyDecodingStrategy = .convertFromSnakeCase
        return try decoder.decode(SupervisorStatus.self, from: Data(outcome.output.utf8))
    }

    func domain(_ role: DomainRole) throws -> SupervisorStatus.Domain {
        guard let domain = try status().domains.first(where: { $0.role == role }) else { throw TestFailure("no \(role) in the status") }
        return domain
    }

    /// Every log of the runtime folder, for failure messages.
    var logs: String {
        let folder = "\(runtimeDirectory)/log"
        let names = (try? FileManager.default.contentsOfDirectory(atPath: folder)) ?? []
        return names.sorted().map { name in
            let text = (try? String(contentsOfFile: "\(folder)/\(name)", encoding: .utf8)) ?? ""
            return "== \(name)\n" + text.split(separator: "\n").suffix(15).joined(separator: "\n")
        }.joined(separator: "\n")
    }

    func cleanUp() {
        for point in mountPoints where isMounted(point) { unmount(point) }
        if let text = try? String(contentsOfFile: "\(runtimeDirectory)/supervisor.pid", encoding: .utf8),
            let pid = pid_t(text.trimmingCharacters(in: .whitespacesAndNewlines)), kill(pid, 0) == 0
        {
            _ = try? bulkhead(["boot", "--stop"], timeout: 200)
            if kill(pid, 0) == 0 { kill(pid, SIGKILL) }
        }
        if let status = try? SupervisorStatus.read(from: "\(runtimeDirectory)/status.json") {
            for domain in status.domains { if let pid = domain.pid { kill(pid, SIGKILL) } }
        }
        let fuse = "\(runtimeDirectory)/root-fuse"
        if isMounted(fuse) { _ = try? run(["fusermount3", "-u", "-z", fuse]) }
    }
}
