import Foundation
import Sockets
import TestScratch
import Testing

/// One volume the chain creates: its name and size in bytes.
struct VolumeSpec {
    let name: String
    let size: Int
}

/// The whole chain as real processes, in a private scratch folder:
/// `bulkhead-storaged` serving a sparse pool image on `st.sock`, a pool
/// formatted and given volumes with the `bulkhead` CLI, and
/// `bulkhead-cryptd` serving every volume as `vols/NAME.sock`.
///
/// Daemons are started and stopped by pid, every wait is bounded, and
/// `shutdown()` (call it in a `defer`) stops whatever still runs and
/// deletes the folder. A daemon that dies when the test did not kill it is
/// recorded as an issue.
final class Chain {
    let scratch: Scratch
    let volumes: [VolumeSpec]
    let poolSize: Int
    /// Options given to every cryptd start, besides the required ones.
    var cryptdOptions: [String]
    private(set) var storaged: ChildProcess?
    private(set) var cryptd: ChildProcess?
    private var storagedStarts = 0
    private var cryptdStarts = 0

    /// Seconds a daemon may take to accept connections after launch.
    static let readyTimeout = 30.0
    /// The scrypt cost of the test pool: low, so unlocking is fast.
    static let scryptLog2N = "12"

    var image: String { scratch.file("pool.img") }
    var storageSocket: String { scratch.file("st.sock") }
    /// The pool's location for cryptd and the CLI.
    var storage: String { "nbd:unix:" + storageSocket }
    var stateDirectory: String { scratch.file("state") }
    var serveDirectory: String { scratch.file("vols") }
    var keyFile: String { scratch.file("key") }

    /// Builds the chain up to a running cryptd (unless `startCryptd` is false).
    init(
        poolSize: Int = 256 * mebibyte,
        volumes: [VolumeSpec] = [VolumeSpec(name: "vm1", size: 64 * mebibyte), VolumeSpec(name: "vm2", size: 64 * mebibyte)],
        cryptdOptions: [String] = [], startCryptd: Bool = true
    ) throws {
        scratch = try Scratch()
        self.volumes = volumes
        self.poolSize = poolSize
        self.cryptdOptions = cryptdOptions
        do {
            try makeSparseFile(image, size: poolSize)
            try writeFile(keyFile, Data("chain passphrase \(UUID().uuidString)".utf8))
            try startStoraged()
            try bulkhead([
                "format", storage, "--key-file", keyFile, "--scrypt-log2n", Self.scryptLog2N,
                "--state-dir", stateDirectory, "--recovery-key-out", scratch.file("recovery.key"),
            ])
            for volume in volumes {
                try bulkhead([
                    "volume", "create", storage, volume.name, "--size", "\(volume.size / kibibyte)K",
                    "--key-file", keyFile, "--state-dir", stateDirectory,
                ])
            }
            if startCryptd { try self.startCryptd() }
        } catch {
            shutdown()
            throw error
        }
    }

    // MARK: - Addresses

    func volumeSocket(_ name: String) -> String { serveDirectory + "/" + name + ".sock" }

    /// The URI every libnbd and QEMU tool accepts for a volume's export.
    func uri(_ name: String) -> String { "nbd+unix:///\(name)?socket=\(volumeSocket(name))" }

    /// The storage domain's export as a URI (the default export name).
    var storageURI: String { "nbd+unix:///?socket=\(storageSocket)" }

    // MARK: - Storage domain

    /// Starts bulkhead-storaged on the pool image and waits until it accepts.
    func startStoraged() throws {
        precondition(storaged == nil, "storaged already runs")
        storagedStarts += 1
        let process = try ChildProcess(
            [try Tools.built("bulkhead-storaged"), "--listen", "unix:" + storageSocket, "--export", "pool=" + image],
            logPath: scratch.file("storaged-\(storagedStarts).log"))
        storaged = process
        try waitUntilAccepting(process, sockets: [storageSocket])
    }

    /// kill -9 of the storage domain.
    func killStoraged() {
        storaged?.kill9()
        storaged = nil
    }

    /// SIGTERM to the storage domain; its exit status.
    @discardableResult
    func stopStoraged() -> Int32? {
        defer { storaged = nil }
        return stop(storaged, "bulkhead-storaged")
    }

    // MARK: - Crypt domain

    /// The cryptd command line with `extra` options.
    func cryptdCommand(_ extra: [String] = []) throws -> [String] {
        [
            try Tools.built("bulkhead-cryptd"), "--storage", storage, "--key-file", keyFile,
            "--state-dir", stateDirectory, "--serve-dir", serveDirectory,
        ] + cryptdOptions + extra
    }

    /// Launches cryptd without waiting for it, for tests that expect it to refuse.
    func launchCryptd(_ extra: [String] = []) throws -> ChildProcess {
        precondition(cryptd == nil, "cryptd already runs")
        cryptdStarts += 1
        let process = try ChildProcess(try cryptdCommand(extra), logPath: scratch.file("cryptd-\(cryptdStarts).log"))
        cryptd = process
        return process
    }

    /// Starts cryptd and waits until every volume socket accepts.
    func startCryptd(_ extra: [String] = []) throws {
        let process = try launchCryptd(extra)
        try waitUntilAccepting(process, sockets: volumes.map { volumeSocket($0.name) })
    }

    /// Forgets a cryptd that ended as the test expected (a refusal).
    func forgetCryptd() { cryptd = nil }

    /// kill -9 of the crypt domain.
    func killCryptd() {
        cryptd?.kill9()
        cryptd = nil
    }

    /// SIGTERM to the crypt domain; its exit status (nil if it was not running).
    @discardableResult
    func stopCryptd() -> Int32? {
        defer { cryptd = nil }
        return stop(cryptd, "bulkhead-cryptd")
    }

    // MARK: - Tools

    /// Runs the `bulkhead` CLI; throws unless it exits 0.
    @discardableResult
    func bulkhead(_ arguments: [String], timeout: Double = 120) throws -> CommandResult {
        try runChecked([try Tools.built("bulkhead")] + arguments, timeout: timeout)
    }

    /// The last lines of each daemon's logs, for failure messages.
    var logs: String {
        let names = (try? FileManager.default.contentsOfDirectory(atPath: scratch.path)) ?? []
        return names.filter { $0.hasSuffix(".log") }.sorted().map { name in
            "--- \(name) ---\n" + lastPart(readText(scratch.file(name)), limit: 1500)
        }.joined(separator: "\n")
    }

    /// Stops both daemons (SIGTERM, SIGKILL after a bound) and deletes the folder.
    func shutdown() {
        stopCryptd()
        stopStoraged()
        scratch.remove()
    }

    // MARK: - Internals

    private func stop(_ process: ChildProcess?, _ name: String) -> Int32? {
        guard let process else { return nil }
        if let status = process.status {
            Issue.record("\(name) had exited on its own with status \(status): `\(process.commandLine)`\n\(lastPart(process.log))")
            return status
        }
        let (status, killed) = process.stop(grace: 15)
        if killed { Issue.record("\(name) ignored SIGTERM and was killed: `\(process.commandLine)`\n\(lastPart(process.log))") }
        return status
    }

    private func waitUntilAccepting(_ process: ChildProcess, sockets: [String]) throws {
        let deadline = Date().addingTimeInterval(Self.readyTimeout)
        var waiting = sockets
        while let socket = waiting.first {
            if let status = process.status {
                throw ChainError.exitedEarly(command: process.commandLine, status: status, log: lastPart(process.log))
            }
            if (try? Socket.connect(to: .unix(path: socket))) != nil {
                waiting.removeFirst()
                continue
            }
            if Date() >= deadline {
                throw ChainError.notReady(
                    command: process.commandLine, socket: socket, seconds: Self.readyTimeout, log: lastPart(process.log))
            }
            usleep(10_000)
        }
    }
}
