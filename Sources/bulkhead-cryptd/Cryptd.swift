import ArgumentParser
import BlockDevice
import BulkheadVersion
import CSystemShims
import CryptPool
import DaemonSupport
import Foundation
import Keys
import Logging
import NBDServer
import Sockets

/// `bulkhead-cryptd`: the crypt domain. Holds the pool's keys, opens the
/// pool on the storage domain's export, and serves each volume to its
/// consumer over NBD on its own Unix socket.
struct Cryptd: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "bulkhead-cryptd",
        abstract: "Serve a pool's encrypted, authenticated volumes over NBD (the Bulkhead crypt domain).",
        discussion: """
            The pool is read from STORAGE: nbd:unix:PATH[#EXPORT] for a storage domain, or a path to an \
            image file. Each volume is served on its own socket, SERVE_DIR/NAME.sock, as the NBD export \
            NAME (which also answers the empty name). Exits 0 on SIGTERM or SIGINT after a final commit.
            """,
        version: BulkheadVersion.string)

    @Option(name: .customLong("storage"), help: ArgumentHelp("Where the pool is: nbd:unix:PATH[#EXPORT] or an image file.", valueName: "storage"))
    var storage: String

    @Option(name: .customLong("key-file"), help: ArgumentHelp("Read the passphrase from this file (its exact bytes).", valueName: "path"))
    var keyFile: String?

    @Option(name: .customLong("recovery-key-file"), help: ArgumentHelp("Unlock with the recovery key in this file.", valueName: "path"))
    var recoveryKeyFile: String?

    @Option(name: .customLong("state-dir"), help: ArgumentHelp("The crypt domain's own state directory (trust anchor).", valueName: "dir"))
    var stateDirectory: String

    @Option(name: .customLong("serve-dir"), help: ArgumentHelp("Directory for the volumes' sockets.", valueName: "dir"))
    var serveDirectory: String

    @Option(name: .customLong("volume"), help: ArgumentHelp("Serve only these volumes (repeatable; default all).", valueName: "name"))
    var volumes: [String] = []

    @Option(name: .customLong("allow-uid"), help: ArgumentHelp("Only peers with this uid may connect (SO_PEERCRED; repeatable).", valueName: "uid"))
    var allowedUIDs: [UInt32] = []

    @Option(name: .customLong("retry-window"), help: ArgumentHelp("Seconds to keep retrying requests while the storage domain is away.", valueName: "seconds"))
    var retryWindow: Double = 30

    @Option(name: .customLong("checkpoint-records"), help: ArgumentHelp("Log records between tree checkpoints (memory bound).", valueName: "count"))
    var checkpointRecords: Int = 65_536

    @Option(name: .customLong("workers"), help: ArgumentHelp("Threads serving each consumer connection (requests in flight to storage).", valueName: "count"))
    var workers: Int = Self.defaultWorkersPerConnection

    @Option(name: .customLong("log-level"), help: ArgumentHelp("trace, debug, info, notice, warning, error or critical.", valueName: "level"))
    var logLevel = "info"

    /// Threads serving one consumer connection by default. Each waits on
    /// the storage domain for its request, so they bound the requests in
    /// flight to storage.
    static let defaultWorkersPerConnection = 32
    /// malloc arenas for the whole process. Every request thread allocates,
    /// and with glibc's default of 8 per core the arenas grew cryptd to
    /// 1.07 GB under 60 s of 4k random writes, two arenas to 615 MB, one to
    /// about 320 MB at the same write rate (bench/CHAIN.md); per-thread
    /// caches in front of the arena keep its lock off the request path.
    static let mallocArenas: Int32 = 1

    func run() throws {
        let program = "bulkhead-cryptd"
        guard let level = Logger.Level(rawValue: logLevel) else {
            throw commandFailure(program, "bad --log-level \"\(logLevel)\"", status: usageExitCode)
        }
        guard retryWindow > 0, checkpointRecords >= 100 else {
            throw commandFailure(program, "--retry-window must be positive and --checkpoint-records at least 100", status: usageExitCode)
        }
        guard (1...256).contains(workers) else {
            throw commandFailure(program, "--workers must be between 1 and 256", status: usageExitCode)
        }
        let location: StorageLocation
        do { location = try StorageLocation(parsing: storage) } catch {
            throw commandFailure(program, "bad --storage: \(error)", status: usageExitCode)
        }
        LoggingSystem.bootstrap { label in
            var handler = StreamLogHandler.standardError(label: label)
            handler.logLevel = level
            return handler
        }
        let logger = Logger(label: program)
        for problem in hardenProcessForSecrets() { logger.warning("hardening: \(problem)") }
        if bulkhead_limit_malloc_arenas(Self.mallocArenas) != 1 { logger.warning("cannot limit malloc arenas") }

        let secret: KeyslotSecret
        do { secret = try SecretInput.poolSecret(keyFile: keyFile, recoveryKeyFile: recoveryKeyFile) } catch {
            throw commandFailure(program, error.description)
        }
        let device: any BlockDevice
        do { device = try location.open(retryWindow: retryWindow) } catch {
            throw commandFailure(program, "cannot open storage \(location): \(error)")
        }
        let pool: Pool
        do {
            let anchor = try FileTrustAnchor(directory: stateDirectory)
            pool = try Pool.open(
                storage: device, secret: secret, anchor: anchor,
                configuration: PoolConfiguration(checkpointRecords: checkpointRecords))
        } catch {
            throw commandFailure(program, "cannot open the pool on \(location): \(error)")
        }
        let served = volumes.isEmpty ? pool.volumes.map(\.name) : volumes
        for name in served where !pool.volumes.contains(where: { $0.name == name }) {
            throw commandFailure(program, "no volume named \"\(name)\" in the pool", status: usageExitCode)
        }
        do {
            try FileManager.default.createDirectory(atPath: serveDirectory, withIntermediateDirectories: true)
        } catch {
            throw commandFailure(program, "cannot create \(serveDirectory): \(error.localizedDescription)")
        }
        var servers: [NBDServer] = []
        let allowed = Set(allowedUIDs)
        for name in served {
            do {
                let volume = try pool.volume(named: name)
                var configuration = NBDServerConfiguration(workersPerConnection: workers)
                if !allowed.isEmpty {
                    configuration.acceptPeer = { socket in
                        guard let credentials = socket.peerCredentials() else { return false }
                        return allowed.contains(credentials.uid)
                    }
                }
                let server = try NBDServer(
                    exports: [NBDExport(name: name, description: "Bulkhead volume \(name)", device: volume)],
                    defaultExport: name, configuration: configuration, logger: logger)
                let listener = try Listener(binding: .unix(path: "\(serveDirectory)/\(name).sock"), permissions: 0o660)
                server.start([listener])
                servers.append(server)
            } catch {
                servers.forEach { _ = $0.shutdown() }
                throw commandFailure(program, "cannot serve volume \(name): \(error)")
            }
        }
        logger.info("serving", metadata: ["volumes": "\(served.joined(separator: ","))", "generation": "\(pool.generation)"])
        let signal = waitForTerminationSignal()
        logger.info("shutting down", metadata: ["signal": "\(signal)"])
        servers.forEach { _ = $0.shutdown() }
        do { try pool.close() } catch { logger.error("final checkpoint failed: \(error)") }
    }
}
