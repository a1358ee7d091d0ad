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
import PoolFormat
import Sockets
import TPM

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
            NAME (which also answers the empty name). With --tpm2 the pool is unlocked by its tpm2 keyslots; \
            with --anchor tpm2 a TPM NV counter refuses rolled-back pools. The control socket lets bulkhead \
            --control administer the served pool (docs/control.md). Exits 0 on SIGTERM or SIGINT after a final commit.
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

    @Option(name: .customLong("allow"), help: ArgumentHelp("Only peers with this uid may connect to this volume (SO_PEERCRED; repeatable; replaces --allow-uid for that volume).", valueName: "volume=uid"))
    var volumeAllowances: [String] = []

    @Option(name: .customLong("retry-window"), help: ArgumentHelp("Seconds to keep retrying requests while the storage domain is away.", valueName: "seconds"))
    var retryWindow: Double = 30

    @Option(name: .customLong("checkpoint-records"), help: ArgumentHelp("Log records between tree checkpoints (memory bound).", valueName: "count"))
    var checkpointRecords: Int = 65_536

    @Option(name: .customLong("metadata-cache"), help: ArgumentHelp("MiB of decrypted tree nodes kept in memory (4 KiB each); random reads of more data than about 64 times this read tree nodes from storage too.", valueName: "MiB"))
    var metadataCacheMiB: Int = Self.defaultMetadataCacheMiB

    @Flag(name: .customLong("tpm2"), help: "Unlock with the pool's tpm2 keyslots (each is tried).")
    var tpm2 = false

    @Option(name: .customLong("tpm2-device"), help: ArgumentHelp("The TPM's TCTI (default device:/dev/tpmrm0; tests: swtpm:host=127.0.0.1,port=N).", valueName: "tcti"))
    var tpm2Device = TPMContext.defaultTCTI

    @Option(name: .customLong("tpm2-pin-file"), help: ArgumentHelp("The PIN of PIN-protected tpm2 keyslots, from this file.", valueName: "path"))
    var tpm2PINFile: String?

    @Option(name: .customLong("anchor"), help: ArgumentHelp("Trust anchor: file (state directory) or tpm2 (TPM NV counter); repeatable to combine. Default: file.", valueName: "kind"))
    var anchors: [String] = []

    @Option(name: .customLong("anchor-interval"), help: ArgumentHelp("With --anchor tpm2: advance the counter at most once per this many seconds while serving (and at clean close).", valueName: "seconds"))
    var anchorInterval: Double = 3600

    @Option(name: .customLong("anchor-nv-index"), help: ArgumentHelp("With --anchor tpm2: the NV index (hex); default derived from the pool UUID.", valueName: "index"))
    var anchorNVIndex: String?

    @Option(name: .customLong("control"), help: ArgumentHelp("Control socket for bulkhead --control (default unix:STATE_DIR/control.sock; 'none' for no socket).", valueName: "address"))
    var control: String?

    @Option(name: .customLong("control-allow-uid"), help: ArgumentHelp("Besides root, this uid may use the control socket (repeatable).", valueName: "uid"))
    var controlUIDs: [UInt32] = []

    @Option(name: .customLong("commit-interval"), help: ArgumentHelp("Seconds after which unflushed writes are committed (0: only on FLUSH).", valueName: "seconds"))
    var commitInterval: Double = 5

    @Option(name: .customLong("workers"), help: ArgumentHelp("Threads serving each consumer connection (requests in flight to storage).", valueName: "count"))
    var workers: Int = Self.defaultWorkersPerConnection

    @Option(name: .customLong("log-level"), help: ArgumentHelp("trace, debug, info, notice, warning, error or critical.", valueName: "level"))
    var logLevel = "info"

    /// Threads serving one consumer connection by default. Each waits on
    /// the storage domain for its request, so they bound the requests in
    /// flight to storage.
    static let defaultWorkersPerConnection = 32
    /// The node cache's default: 8,192 nodes, whose leaves map 2 GiB of
    /// data (64 pointers of 4 KiB blocks each).
    static let defaultMetadataCacheMiB = (PoolConfiguration().nodeCacheCapacity * PoolLayout.blockSize) >> 20
    /// The node cache's bounds: 1 MiB (256 nodes) still holds the paths
    /// of many walks at once, and the cache lives in locked memory (64 GiB
    /// of leaves map 4 TiB of data).
    static let metadataCacheRange = 1...65_536
    /// malloc arenas for the whole process. Every request thread allocates,
    /// and with glibc's default of 8 per core the arenas grew cryptd to
    /// 1.07 GB under 60 s of 4k random writes, two arenas to 615 MB, one to
    /// about 320 MB at the same write rate (bench/CHAIN.md); per-thread
    /// caches in front of the arena keep its lock off the request path.
    static let mallocArenas: Int32 = 1
    /// Allocations from this size up are mapped on their own and unmapped
    /// when freed: WRITE payloads and sealed data buffers, commit and
    /// checkpoint buffers. With glibc's dynamic threshold, 1 MiB write
    /// buffers went to the heap, and small allocations split each one freed,
    /// so the heap grew by about the data written (VmHWM 2.3 GB after 2 GiB
    /// of 1 MiB writes; with every page locked by mlockall, for good).
    static let mallocMapThreshold = 128 << 10

    func run() throws {
        let program = "bulkhead-cryptd"
        guard let level = Logger.Level(rawValue: logLevel) else {
            throw commandFailure(program, "bad --log-level \"\(logLevel)\"", status: usageExitCode)
        }
        guard retryWindow > 0, checkpointRecords >= 100 else {
            throw commandFailure(program, "--retry-window must be positive and --checkpoint-records at least 100", status: usageExitCode)
        }
        guard commitInterval >= 0, commitInterval.isFinite else {
            throw commandFailure(program, "--commit-interval must be 0 or a positive number of seconds", status: usageExitCode)
        }
        guard Self.metadataCacheRange.contains(metadataCacheMiB) else {
            throw commandFailure(
                program, "--metadata-cache must be between \(Self.metadataCacheRange.lowerBound) and \(Self.metadataCacheRange.upperBound) MiB",
                status: usageExitCode)
        }
        guard (1...256).contains(workers) else {
            throw commandFailure(program, "--workers must be between 1 and 256", status: usageExitCode)
        }
        let volumeUIDs = try VolumeAccess.parse(volumeAllowances, program: program)
        let location: StorageLocation
        do { location = try StorageLocation(parsing: storage) } catch {
            throw commandFailure(program, "bad --storage: \(error)", status: usageExitCode)
        }
        let anchorKinds = anchors.isEmpty ? ["file"] : anchors
        guard anchorKinds.allSatisfy({ $0 == "file" || $0 == "tpm2" }), anchorInterval >= 1 else {
            throw commandFailure(program, "--anchor takes file or tpm2, --anchor-interval at least 1 second", status: usageExitCode)
        }
        var nvIndex: UInt32?
        if let anchorNVIndex {
            guard let value = UInt32(anchorNVIndex.hasPrefix("0x") ? String(anchorNVIndex.dropFirst(2)) : anchorNVIndex, radix: 16),
                TPMNVCounter.indexRange.contains(value)
            else { throw commandFailure(program, "--anchor-nv-index must be a hex NV index 0x01000000...0x01FFFFFF", status: usageExitCode) }
            nvIndex = value
        }
        guard !tpm2 || (keyFile == nil && recoveryKeyFile == nil) else {
            throw commandFailure(program, "--tpm2 unlocks with the TPM: leave out --key-file and --recovery-key-file", status: usageExitCode)
        }
        // The default socket is a convenience: a state directory whose path
        // is too long for a socket, or a socket in use, leaves it out.
        let controlAddress: SocketAddress?
        let controlIsDefault = control == nil
        do {
            controlAddress = control == "none" ? nil : try SocketAddress(parsing: control ?? "unix:\(stateDirectory)/control.sock")
        } catch {
            guard controlIsDefault else { throw commandFailure(program, "bad --control: \(error)", status: usageExitCode) }
            controlAddress = nil
        }
        LoggingSystem.bootstrap { label in
            var handler = StreamLogHandler.standardError(label: label)
            handler.logLevel = level
            return handler
        }
        let logger = Logger(label: program)
        for problem in hardenProcessForSecrets() { logger.warning("hardening: \(problem)") }
        if bulkhead_limit_malloc_arenas(Self.mallocArenas) != 1 { logger.warning("cannot limit malloc arenas") }
        if bulkhead_set_mmap_threshold(Self.mallocMapThreshold) != 1 { logger.warning("cannot set the malloc mmap threshold") }

        let tpm = TPMConnection(tcti: tpm2Device)
        let secret: KeyslotSecret
        do {
            if tpm2 {
                let pin = try tpm2PINFile.map { path throws(SecretInputError) in
                    var bytes = try SecretInput.keyFile(path)
                    return SecretBytes.taking(&bytes)
                }
                secret = .tpm2(TPMKeyslotUnsealer(context: try tpm.context(), pin: pin))
            } else {
                secret = try SecretInput.poolSecret(keyFile: keyFile, recoveryKeyFile: recoveryKeyFile)
            }
        } catch {
            throw commandFailure(program, "\(error)")
        }
        let device: any BlockDevice
        do { device = try location.open(retryWindow: retryWindow) } catch {
            throw commandFailure(program, "cannot open storage \(location): \(error)")
        }
        let pool: Pool
        do {
            var parts: [any TrustAnchor] = []
            if anchorKinds.contains("file") { parts.append(try FileTrustAnchor(directory: stateDirectory)) }
            if anchorKinds.contains("tpm2") { parts.append(TPMTrustAnchor(context: try tpm.context(), index: nvIndex)) }
            pool = try Pool.open(
                storage: device, secret: secret, anchor: CombinedTrustAnchor(parts),
                configuration: PoolConfiguration(
                    checkpointRecords: checkpointRecords, nodeCacheCapacity: (metadataCacheMiB << 20) / PoolLayout.blockSize,
                    commitInterval: commitInterval))
        } catch PoolError.unlockFailed(let reasons) where tpm2 && reasons.isEmpty {
            throw commandFailure(program, "the pool on \(location) has no tpm2 keyslot: unlock with --key-file or --recovery-key-file, then enrol with bulkhead keyslot add --tpm2")
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
        let servers = VolumeServers(
            pool: pool, directory: serveDirectory, workersPerConnection: workers,
            access: VolumeAccess(everyVolume: Set(allowedUIDs), perVolume: volumeUIDs), logger: logger)
        for name in served {
            do { try servers.serve(name) } catch {
                servers.stopAll()
                throw commandFailure(program, "cannot serve volume \(name): \(error)")
            }
        }
        var controlServer: ControlServer?
        if let controlAddress {
            if controlIsDefault {
                try? FileManager.default.createDirectory(
                    atPath: stateDirectory, withIntermediateDirectories: true, attributes: [.posixPermissions: 0o700])
            }
            do {
                controlServer = try ControlServer(
                    address: controlAddress, pool: pool, volumes: servers, tpm: tpm, allowedUIDs: Set(controlUIDs), logger: logger)
            } catch where controlIsDefault {
                logger.warning("no control socket: cannot listen on \(controlAddress): \(error)")
            } catch {
                servers.stopAll()
                throw commandFailure(program, "cannot listen on the control socket \(controlAddress): \(error)")
            }
            controlServer?.start()
        }
        let ticker = anchorKinds.contains("tpm2") ? EpochTicker(pool: pool, interval: anchorInterval, logger: logger) : nil
        ticker?.start()
        logger.info(
            "serving",
            metadata: [
                "volumes": "\(served.joined(separator: ","))", "unlocked": "\(tpm2 ? "tpm2 keyslot" : recoveryKeyFile != nil ? "recovery key" : "passphrase")", "generation": "\(pool.generation)", "epoch": "\(pool.anchorEpoch)",
                "control": "\(controlServer.map { $0.listener.address.description } ?? "none")", "metadata-cache": "\(metadataCacheMiB) MiB",
            ])
        let signal = waitForTerminationSignal()
        logger.info("shutting down", metadata: ["signal": "\(signal)"])
        controlServer?.stop()
        ticker?.stop()
        servers.stopAll()
        // A clean close starts a new anchor epoch (a plain commit without a TPM counter).
        do { try pool.advanceAnchorEpoch() } catch { logger.error("final commit failed: \(error)") }
    }
}
