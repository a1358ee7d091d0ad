import ProcessSpawn
import ArgumentParser
import DaemonSupport
import Foundation
import LaunchMeasurement
import Toolstack

/// `bulkhead boot`: measures, launches and supervises the domains of a boot
/// manifest (docs/toolstack.md).
struct Boot: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Measure, launch and supervise the storage and crypt domains of a boot manifest.",
        discussion: """
            Starts a supervisor in its own session (it outlives this command and the initramfs), which \
            extends the manifest's PCR with each domain's executable and configuration, starts the storage \
            domain, waits for its socket, then the crypt domain, restarts a domain that ends, and on SIGTERM \
            stops the crypt domain first, then the storage domain. This command returns once the domains serve \
            (and root is mounted, with --root). See docs/toolstack.md.
            """)

    @Option(name: .customLong("manifest"), help: ArgumentHelp("The boot manifest.", valueName: "path"))
    var manifest = BootManifest.defaultPath

    @Flag(name: .customLong("foreground"), help: "Supervise in this process instead of a detached supervisor.")
    var foreground = false

    @Flag(name: .customLong("stop"), help: "Stop a running supervisor: the crypt domain, then the storage domain.")
    var stop = false

    @Option(name: .customLong("root"), help: ArgumentHelp("Attach this export as the root volume.", valueName: "export"))
    var rootExport: String?

    @Option(name: .customLong("mount"), help: ArgumentHelp("Where to mount the root volume (with --root).", valueName: "dir"))
    var mountPoint: String?

    @Option(
        name: .customLong("recovery-key-file"),
        help: ArgumentHelp(
            "Unlock the pool with the recovery key in this file instead of the manifest's keyslot (the recovery path when the TPM does not unseal).",
            valueName: "path"))
    var recoveryKeyFile: String?

    @Flag(name: .customLong("supervise"), help: .hidden)
    var supervise = false

    @Option(name: .customLong("ready-fd"), help: .hidden)
    var readyDescriptor: Int32?

    /// Bound on a detached boot: both domains' readiness and the root mount.
    static let bootSeconds = 300.0

    func run() throws {
        let path = absolute(manifest)
        var manifest: BootManifest
        do { manifest = try ManifestFile.load(path) } catch { throw commandFailure(program, error.description, status: configurationExitCode) }
        if stop { return try stopSupervisor(manifest) }
        if let recoveryKeyFile {
            guard access(recoveryKeyFile, R_OK) == 0 else {
                throw commandFailure(program, "cannot read the recovery key file \(recoveryKeyFile): \(String(cString: strerror(errno)))", status: usageExitCode)
            }
            manifest = manifest.unlockingWithRecoveryKey(file: absolute(recoveryKeyFile))
        }
        guard (rootExport == nil) == (mountPoint == nil) else {
            throw commandFailure(program, "--root and --mount go together", status: usageExitCode)
        }
        if let rootExport, !manifest.exports.contains(where: { $0.volume == rootExport }) {
            throw commandFailure(program, "--root \(rootExport): the manifest exports no such volume", status: usageExitCode)
        }
        if let pid = runningSupervisor(manifest) {
            throw commandFailure(program, "a supervisor already runs for \(manifest.runtimeDirectory) (pid \(pid))")
        }
        let root = rootExport.map { Supervisor.RootRequest(export: $0, mountPoint: absolute(mountPoint!)) }
        if supervise || foreground {
            try runSupervisor(manifest, path: path, root: root)
        } else {
            try startDetached(manifest, path: path)
        }
    }

    private func runSupervisor(_ manifest: BootManifest, path: String, root: Supervisor.RootRequest?) throws {
        Supervisor.blockSignals()
        let supervisor = Supervisor(manifest: manifest, manifestPath: path)
        do { try supervisor.boot(root: root) } catch {
            report("error: \(error)")
            throw commandFailure(program, "\(error)")
        }
        report("ready")
        supervisor.superviseUntilStopped()
    }

    private func report(_ line: String) {
        let fd = readyDescriptor ?? STDOUT_FILENO
        let text = readyDescriptor == nil ? "bulkhead boot: \(line)\n" : line + "\n"
        _ = text.utf8CString.withUnsafeBufferPointer { write(fd, $0.baseAddress, $0.count - 1) }
        if let readyDescriptor {
            close(readyDescriptor)
            self.redirectStandardOutput()
        }
    }

    /// After readiness, the supervisor's stdout joins its log (stderr).
    private func redirectStandardOutput() { dup2(STDERR_FILENO, STDOUT_FILENO) }

    /// Starts `bulkhead boot --supervise` in a new session (argv[0] "@bulkhead",
    /// which systemd's shutdown spares: docs/toolstack.md, "Initramfs") and
    /// waits until it reports the domains ready or fails.
    private func startDetached(_ manifest: BootManifest, path: String) throws {
        let layout = manifest.layout
        for directory in [layout.root, layout.logDirectory] { mkdir(directory, 0o755) }
        guard let executable = try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/exe") else {
            throw commandFailure(program, "cannot find this executable (/proc/self/exe)")
        }
        var argv = ["@bulkhead", "boot", "--supervise", "--manifest", path, "--ready-fd", "3"]
        if let rootExport, let mountPoint { argv += ["--root", rootExport, "--mount", absolute(mountPoint)] }
        if let recoveryKeyFile { argv += ["--recovery-key-file", absolute(recoveryKeyFile)] }
        var ready: [Int32] = [0, 0]
        guard pipe(&ready) == 0 else { throw commandFailure(program, "pipe: \(String(cString: strerror(errno)))") }
        for end in ready { _ = fcntl(end, F_SETFD, FD_CLOEXEC) }
        let pid: pid_t
        do {
            pid = try ProcessLaunch.spawn(
                executable: executable, argv: argv, descriptors: [3: ready[1]], outputPath: layout.log("supervisor"), newSession: true)
        } catch {
            throw commandFailure(program, "\(error)")
        }
        close(ready[1])
        defer { close(ready[0]) }
        var text = ""
        let deadline = monotonicNow() + Self.bootSeconds
        var buffer = [UInt8](repeating: 0, count: 4096)
        while !text.contains("\n"), monotonicNow() < deadline {
            var poller = pollfd(fd: ready[0], events: Int16(POLLIN), revents: 0)
            guard poll(&poller, 1, 200) >= 0 else { break }
            guard poller.revents != 0 else { continue }
            let count = buffer.withUnsafeMutableBytes { read(ready[0], $0.baseAddress, $0.count) }
            if count <= 0 { break }
            text += String(decoding: buffer[0..<count], as: UTF8.self)
        }
        let line = text.split(separator: "\n").first.map(String.init) ?? ""
        if line == "ready" {
            print("bulkhead boot: domains running; supervisor pid \(pid), status in \(layout.status), log in \(layout.log("supervisor"))")
            return
        }
        if line.hasPrefix("error: ") { throw commandFailure(program, String(line.dropFirst(7))) }
        kill(pid, SIGTERM)
        throw commandFailure(program, "the supervisor did not report ready within \(Int(Self.bootSeconds)) s; see \(layout.log("supervisor"))")
    }

    private func stopSupervisor(_ manifest: BootManifest) throws {
        guard let pid = runningSupervisor(manifest) else {
            throw commandFailure(program, "no supervisor runs for \(manifest.runtimeDirectory)")
        }
        kill(pid, SIGTERM)
        let deadline = monotonicNow() + Supervisor.stopGraceSeconds * 2 + 30
        while !processIsGone(pid) {
            guard monotonicNow() < deadline else { throw commandFailure(program, "the supervisor (pid \(pid)) did not stop") }
            usleep(20_000)
        }
        print("bulkhead boot: stopped (supervisor pid \(pid)).")
    }
}

/// Exit status for a manifest that cannot be used (EX_CONFIG).
let configurationExitCode: Int32 = 78

func absolute(_ path: String) -> String {
    path.hasPrefix("/") ? path : FileManager.default.currentDirectoryPath + "/" + path
}

/// The pid of the live supervisor of `manifest`'s runtime folder, if any.
func runningSupervisor(_ manifest: BootManifest) -> pid_t? {
    guard let text = try? String(contentsOfFile: manifest.layout.supervisorPID, encoding: .utf8),
        let pid = pid_t(text.trimmingCharacters(in: .whitespacesAndNewlines)), pid > 0, !processIsGone(pid)
    else { return nil }
    return pid
}

/// Whether `pid` has ended (a zombie counts as ended).
func processIsGone(_ pid: pid_t) -> Bool {
    if kill(pid, 0) != 0 && errno == ESRCH { return true }
    guard let stat = try? String(contentsOfFile: "/proc/\(pid)/stat", encoding: .utf8),
        let close = stat.lastIndex(of: ")")
    else { return true }
    return stat[stat.index(after: close)...].trimmingCharacters(in: .whitespaces).hasPrefix("Z")
}
