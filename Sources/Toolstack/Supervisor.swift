#if canImport(Glibc)
import ProcessSpawn
import Glibc
#endif
import Foundation
import LaunchMeasurement
import Sockets
import TPM

/// Boots and supervises the domains of one manifest (docs/toolstack.md,
/// "Supervision"): measures and starts the storage domain, waits for its
/// socket, then the crypt domain and its volume sockets; restarts a domain
/// that ends with exponential backoff; on SIGTERM or SIGINT stops the crypt
/// domain first (its final commit), then the storage domain.
public final class Supervisor {
    /// Where the root volume is attached and mounted, if asked.
    public struct RootRequest: Sendable {
        public var export: String
        public var mountPoint: String
        public init(export: String, mountPoint: String) {
            self.export = export
            self.mountPoint = mountPoint
        }
    }

    /// Bounds on waiting for a domain to become ready.
    public static let storageReadySeconds = 30.0
    public static let cryptReadySeconds = 120.0
    /// How long a domain has to stop on SIGTERM before SIGKILL.
    public static let stopGraceSeconds = 60.0

    private struct Domain {
        var launch: DomainLaunch
        var identity: DomainIdentity
        var measuredDigest: [UInt8] = []
        var process: DomainProcess?
        var startedAt: Double?
        var startedMonotonic = 0.0
        var restarts = 0
        var lastExit: String?
        var nextStart: Double?
        var delay: Double
        var failed = false
    }

    private let manifest: BootManifest
    private let manifestPath: String
    private let layout: RuntimeLayout
    private let libraryDirectories = SandboxCommand.loadedLibraryDirectories()
    private var domains: [DomainRole: Domain] = [:]
    private var state = "starting"
    private let startedAt = Date().timeIntervalSince1970
    private var root: RootAttachment?

    public init(manifest: BootManifest, manifestPath: String) {
        self.manifest = manifest
        self.manifestPath = manifestPath
        layout = manifest.layout
    }

    /// The signals the supervisor waits for; block them (`blockSignals`)
    /// before any thread starts.
    static let handledSignals = [SIGTERM, SIGINT, SIGCHLD]

    public static func blockSignals() {
        var set = sigset_t()
        sigemptyset(&set)
        for signal in handledSignals { sigaddset(&set, signal) }
        pthread_sigmask(SIG_BLOCK, &set, nil)
        signal(SIGPIPE, SIG_IGN)
    }

    func log(_ message: String) { Self.log(message) }

    /// One line to the supervisor's log (its stderr), from any thread.
    static func log(_ message: String) {
        let line = "\(ISO8601DateFormatter().string(from: Date())) bulkhead-supervisor[\(getpid())]: \(message)\n"
        _ = line.utf8CString.withUnsafeBufferPointer { write(STDERR_FILENO, $0.baseAddress, $0.count - 1) }
    }

    // MARK: Boot

    /// Prepares the runtime folder and the domains' users and files, then
    /// measures and starts both domains and attaches root if asked. On
    /// failure everything started is stopped again.
    public func boot(root request: RootRequest?) throws(ToolstackError) {
        umask(0o022)
        try prepare()
        let tpm: TPMContext?
        if manifest.measuresIntoTPM {
            do { tpm = try TPMContext(tcti: manifest.tcti) } catch { throw ToolstackError("cannot open the TPM at \(manifest.tcti): \(error)") }
        } else {
            tpm = nil
        }
        do {
            for role in DomainRole.allCases {
                let digest = try Measurement.fileDigest(domains[role]!.launch.executable)
                domains[role]!.measuredDigest = digest
                try Measurement.record(
                    LaunchMeasurement.launchEvents(for: domains[role]!.launch, pcr: manifest.pcr, executableDigest: digest),
                    logPath: layout.eventLog, tpm: tpm)
                try start(role)
                log("measured and started the \(role.rawValue) domain, pid \(domains[role]!.process!.pid)")
            }
            if let request {
                root = try RootAttachment.attach(request, socket: layout.volumeSocket(request.export), runtime: layout) { Supervisor.log($0) }
                log("root: \(request.export) mounted on \(request.mountPoint) from \(root!.device)")
            }
        } catch {
            log("boot failed: \(error)")
            stopAll()
            throw error
        }
        state = "running"
        publish()
    }

    private func prepare() throws(ToolstackError) {
        for role in DomainRole.allCases {
            let launch = manifest.launch(role)
            guard access(launch.executable, X_OK) == 0 else { throw ToolstackError("\(launch.executable): not an executable: \(systemMessage(errno))") }
            domains[role] = Domain(
                launch: launch, identity: try launch.user.resolve(createIfMissing: true),
                delay: Double(manifest.restart.initialDelayMilliseconds) / 1000)
        }
        let storage = domains[.storage]!.identity
        let crypt = domains[.crypt]!.identity
        guard storage.uid != crypt.uid else { throw ToolstackError("the storage and crypt domains resolve to the same uid \(storage.uid)") }
        try makeDirectory(layout.root, owner: 0, group: 0, mode: 0o755)
        try makeDirectory(layout.logDirectory, owner: 0, group: 0, mode: 0o750)
        // The storage socket gets the crypt domain's group (setgid folder)
        // and mode 0770 once it appears: only the two domains and root
        // reach it.
        try makeDirectory(layout.storageSocketDirectory, owner: storage.uid, group: crypt.gid, mode: 0o2750)
        try makeDirectory(layout.volumeDirectory, owner: crypt.uid, group: crypt.gid, mode: 0o755)
        try makeDirectory(manifest.crypt.stateDirectory, owner: crypt.uid, group: crypt.gid, mode: 0o700)
        // `bulkhead format` run as root leaves root's trust anchor here.
        for entry in (try? FileManager.default.contentsOfDirectory(atPath: manifest.crypt.stateDirectory)) ?? [] {
            chown("\(manifest.crypt.stateDirectory)/\(entry)", crypt.uid, crypt.gid)
        }
        // cryptd locks its memory (mlockall); the limit passes to the domains.
        var unlimited = rlimit(rlim_cur: rlim_t.max, rlim_max: rlim_t.max)
        setrlimit(__rlimit_resource_t(__RLIMIT_MEMLOCK.rawValue), &unlimited)
        for disk in manifest.storage.disks {
            guard chown(disk.path, storage.uid, storage.gid) == 0 else {
                throw ToolstackError("cannot give the disk \(disk.path) to the storage domain: \(systemMessage(errno))")
            }
        }
        switch manifest.crypt.keyslot {
        case .keyFile(let path), .recoveryKeyFile(let path):
            guard chown(path, crypt.uid, crypt.gid) == 0, chmod(path, 0o400) == 0 else {
                throw ToolstackError("cannot give the key file \(path) to the crypt domain: \(systemMessage(errno))")
            }
        case .tpm2:
            break
        }
        // The crypt domain unseals and counts epochs through the TPM device
        // itself (root:tss 0660 on a stock system); the supervisor, as root,
        // still measures through it.
        if manifest.cryptUsesTPM, let device = manifest.tpmDevice {
            guard chown(device, 0, crypt.gid) == 0, chmod(device, 0o660) == 0 else {
                throw ToolstackError("cannot give the TPM \(device) to the crypt domain: \(systemMessage(errno))")
            }
        }
        try? "\(getpid())\n".write(toFile: layout.supervisorPID, atomically: true, encoding: .utf8)
        publish()
    }

    private func makeDirectory(_ path: String, owner: uid_t, group: gid_t, mode: mode_t) throws(ToolstackError) {
        if mkdir(path, 0o700) != 0 && errno != EEXIST {
            throw ToolstackError("cannot create \(path): \(systemMessage(errno))")
        }
        guard chown(path, owner, group) == 0, chmod(path, mode) == 0 else {
            throw ToolstackError("cannot set the owner and mode of \(path): \(systemMessage(errno))")
        }
    }

    /// Starts `role` and waits until it serves.
    private func start(_ role: DomainRole) throws(ToolstackError) {
        var domain = domains[role]!
        let process = try DomainProcess.start(
            domain.launch, identity: domain.identity, libraryDirectories: libraryDirectories, logPath: layout.log(role.rawValue))
        domain.process = process
        domain.startedAt = Date().timeIntervalSince1970
        domain.startedMonotonic = monotonicNow()
        domain.nextStart = nil
        domains[role] = domain
        publish()
        switch role {
        case .storage:
            try waitUntilReady(role, timeout: Self.storageReadySeconds) { [layout] in Self.answers(layout.storageSocket) }
            // A crypt domain reconnecting meanwhile is refused and retries.
            chmod(layout.storageSocket, 0o770)
        case .crypt:
            let sockets = manifest.exports.map { layout.volumeSocket($0.volume) }
            try waitUntilReady(role, timeout: Self.cryptReadySeconds) { sockets.allSatisfy(Self.answers) }
            // Consumers other than root pass the socket's mode; cryptd's
            // --allow-uid (SO_PEERCRED) decides who is served.
            for export in manifest.exports where export.consumers.contains(where: { $0 != 0 }) {
                chmod(layout.volumeSocket(export.volume), 0o666)
            }
        }
    }

    static func answers(_ socket: String) -> Bool {
        guard let connection = try? Socket.connect(to: .unix(path: socket)) else { return false }
        connection.shutdown()
        return true
    }

    private func waitUntilReady(_ role: DomainRole, timeout: Double, _ ready: () -> Bool) throws(ToolstackError) {
        let deadline = monotonicNow() + timeout
        while !ready() {
            if let process = domains[role]!.process, let status = ProcessLaunch.reap(process.monitorPID) {
                domains[role]!.process = nil
                domains[role]!.lastExit = describeExit(status)
                throw ToolstackError("the \(role.rawValue) domain \(describeExit(status)) before it served: \(tail(of: layout.log(role.rawValue)))")
            }
            guard monotonicNow() < deadline else {
                throw ToolstackError("the \(role.rawValue) domain did not serve within \(Int(timeout)) s: \(tail(of: layout.log(role.rawValue)))")
            }
            usleep(20_000)
        }
    }

    // MARK: Supervision

    /// Supervises until SIGTERM or SIGINT, then stops everything in order.
    public func superviseUntilStopped() {
        var set = sigset_t()
        sigemptyset(&set)
        for signal in Self.handledSignals { sigaddset(&set, signal) }
        while true {
            var timeout = timespec(tv_sec: 0, tv_nsec: 100_000_000)
            let signal = sigtimedwait(&set, nil, &timeout)
            if signal == SIGTERM || signal == SIGINT {
                log("received signal \(signal): stopping")
                break
            }
            reapAndRestart()
        }
        stopAll()
    }

    private func reapAndRestart() {
        for role in DomainRole.allCases {
            guard var domain = domains[role] else { continue }
            if let process = domain.process, let status = ProcessLaunch.reap(process.monitorPID) {
                let uptime = monotonicNow() - domain.startedMonotonic
                domain.process = nil
                domain.startedAt = nil
                domain.lastExit = describeExit(status)
                if uptime >= Double(manifest.restart.stableAfterSeconds) {
                    domain.delay = Double(manifest.restart.initialDelayMilliseconds) / 1000
                }
                domain.nextStart = monotonicNow() + domain.delay
                let message = "the \(role.rawValue) domain (pid \(process.pid)) \(domain.lastExit!) after \(String(format: "%.1f", uptime)) s; restarting in \(String(format: "%.2f", domain.delay)) s"
                if role == .crypt {
                    log("CRITICAL: CRYPT DOMAIN CRASHED: \(message); consumers see errors until it is back")
                    let console = "bulkhead: CRYPT DOMAIN CRASHED: \(message)\n"
                    let fd = open("/dev/kmsg", O_WRONLY | O_CLOEXEC)
                    if fd >= 0 {
                        _ = console.utf8CString.withUnsafeBufferPointer { write(fd, $0.baseAddress, $0.count - 1) }
                        close(fd)
                    }
                } else {
                    log(message)
                }
                domain.delay = min(domain.delay * 2, Double(manifest.restart.maximumDelayMilliseconds) / 1000)
                domains[role] = domain
                publish()
            }
            if let due = domains[role]!.nextStart, due <= monotonicNow() {
                restart(role)
            }
        }
    }

    private func restart(_ role: DomainRole) {
        // What runs must be what was measured: a changed executable is not
        // started again (the PCR would no longer describe it).
        let digest = try? Measurement.fileDigest(domains[role]!.launch.executable)
        guard digest == domains[role]!.measuredDigest else {
            domains[role]!.nextStart = nil
            domains[role]!.failed = true
            log("CRITICAL: the \(role.rawValue) domain's executable changed since it was measured; not restarting it")
            publish()
            return
        }
        do {
            try start(role)
            domains[role]!.restarts += 1
            log("restarted the \(role.rawValue) domain, pid \(domains[role]!.process!.pid) (restart \(domains[role]!.restarts))")
        } catch {
            log("restarting the \(role.rawValue) domain failed: \(error)")
            if let process = domains[role]!.process {
                kill(process.pid, SIGKILL)
                kill(process.monitorPID, SIGKILL)
                _ = ProcessLaunch.waitForExit(process.monitorPID, timeout: 5)
                domains[role]!.process = nil
            }
            domains[role]!.restarts += 1
            domains[role]!.nextStart = monotonicNow() + domains[role]!.delay
            domains[role]!.delay = min(domains[role]!.delay * 2, Double(manifest.restart.maximumDelayMilliseconds) / 1000)
        }
        publish()
    }

    // MARK: Stop

    /// Detaches root, stops the crypt domain (its final commit), then the
    /// storage domain; SIGKILL after the grace period.
    func stopAll() {
        state = "stopping"
        publish()
        if let root {
            root.detach()
            self.root = nil
        }
        for role in DomainRole.allCases.reversed() {
            guard let process = domains[role]?.process else { continue }
            kill(process.pid, SIGTERM)
            var status = ProcessLaunch.waitForExit(process.monitorPID, timeout: Self.stopGraceSeconds)
            if status == nil {
                log("the \(role.rawValue) domain did not stop within \(Int(Self.stopGraceSeconds)) s: SIGKILL")
                kill(process.pid, SIGKILL)
                kill(process.monitorPID, SIGKILL)
                status = ProcessLaunch.waitForExit(process.monitorPID, timeout: 10)
            }
            domains[role]!.process = nil
            domains[role]!.startedAt = nil
            domains[role]!.lastExit = status.map(describeExit) ?? "did not exit"
            log("stopped the \(role.rawValue) domain: \(domains[role]!.lastExit!)")
        }
        state = "stopped"
        publish()
        unlink(layout.supervisorPID)
    }

    private func publish() {
        let domainStatus = DomainRole.allCases.compactMap { role -> SupervisorStatus.Domain? in
            guard let domain = domains[role] else { return nil }
            let running = domain.process != nil
            return SupervisorStatus.Domain(
                role: role,
                state: running ? "running" : domain.failed ? "failed" : domain.nextStart != nil ? "restarting" : "stopped",
                pid: domain.process?.pid, uid: domain.identity.uid, startedAt: running ? domain.startedAt : nil,
                uptimeSeconds: nil, restarts: domain.restarts, lastExit: domain.lastExit)
        }
        let status = SupervisorStatus(
            supervisorPid: getpid(), manifest: manifestPath, state: state, startedAt: startedAt, domains: domainStatus,
            exports: manifest.exports.map {
                SupervisorStatus.Export(volume: $0.volume, socket: layout.volumeSocket($0.volume), consumers: $0.consumers)
            },
            root: root.map { SupervisorStatus.Root(export: $0.export, mountPoint: $0.mountPoint, device: $0.device) })
        status.write(to: layout.status)
    }
}
