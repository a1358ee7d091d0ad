import Foundation
import Sockets
import TestSupport

/// A real swtpm (TPM 2.0 simulator) listening on a private loopback port
/// pair (data P, control P+1) with its own state directory, started with
/// the TPM already powered and started up, and stopped by pid.
final class SoftwareTPM: Sendable {
    /// Where swtpm is, if installed.
    static let executable: String? = {
        for directory in (ProcessInfo.processInfo.environment["PATH"] ?? "/usr/bin:/bin").split(separator: ":") {
            let path = "\(directory)/swtpm"
            if FileManager.default.isExecutableFile(atPath: path) { return path }
        }
        return nil
    }()

    /// Whether tests needing swtpm run: always under CI=true, where a
    /// missing swtpm must fail them rather than skip them.
    static let shouldRun = executable != nil || ProcessInfo.processInfo.environment["CI"] == "true"

    let stateDirectory: String
    private let ownedDirectory: TemporaryDirectory?
    private let process = Locked<(pid: pid_t, port: UInt16, exited: Bool)?>(nil)

    /// The data port; the control port is the next one.
    var port: UInt16 { process.value!.port }
    /// The TCTI string for tpm2-tss.
    var tcti: String { "swtpm:host=127.0.0.1,port=\(port)" }

    /// Starts swtpm on `stateDirectory` (a new temporary one if nil).
    init(stateDirectory: String? = nil) throws {
        if let stateDirectory {
            self.stateDirectory = stateDirectory
            ownedDirectory = nil
        } else {
            let directory = try TemporaryDirectory()
            self.stateDirectory = directory.path
            ownedDirectory = directory
        }
        try start()
    }

    deinit { stop() }

    /// Starts swtpm on a free port pair, retrying another pair if the one
    /// probed free was taken meanwhile.
    func start() throws {
        guard let executable = Self.executable else {
            throw TestFailure("swtpm is not installed (needed by the TPM tests; install the swtpm and swtpm-tools packages)")
        }
        var lastFailure = ""
        for _ in 0..<8 {
            let port = try freePortPair()
            let log = stateDirectory + "/swtpm.log"
            let argv = [
                executable, "socket", "--tpm2",
                "--server", "type=tcp,port=\(port),bindaddr=127.0.0.1",
                "--ctrl", "type=tcp,port=\(port + 1),bindaddr=127.0.0.1",
                "--tpmstate", "dir=\(stateDirectory)",
                "--flags", "not-need-init,startup-clear",
                "--log", "file=\(log),level=1",
            ]
            let pid = try spawn(argv)
            process.withLock { $0 = (pid, port, false) }
            let ready = eventually(timeout: 10) {
                guard isRunning else { return true }
                return (try? Socket.connect(to: .tcp(host: "127.0.0.1", port: port))) != nil
            }
            if ready && isRunning { return }
            lastFailure = (try? String(contentsOfFile: log, encoding: .utf8)) ?? "no log"
            stop()
        }
        throw TestFailure("swtpm did not start: \(lastFailure)")
    }

    /// Whether swtpm is still alive; reaps it once it has exited.
    var isRunning: Bool {
        process.withLock { state in
            guard var current = state, !current.exited else { return false }
            var status: Int32 = 0
            if waitpid(current.pid, &status, WNOHANG) == current.pid {
                current.exited = true
                state = current
            }
            return !current.exited
        }
    }

    /// SIGTERM, then SIGKILL if swtpm has not exited within 5 seconds.
    func stop() {
        guard isRunning, let pid = process.value?.pid else { return }
        _ = kill(pid, SIGTERM)
        if !eventually(timeout: 5, { !isRunning }) {
            _ = kill(pid, SIGKILL)
            _ = eventually(timeout: 5) { !isRunning }
        }
    }

    /// Stops swtpm and starts it again on the same state directory: a reboot.
    func restart() throws {
        stop()
        try start()
    }
}

/// A port P such that P and P+1 can both be bound on 127.0.0.1 now.
func freePortPair() throws -> UInt16 {
    for _ in 0..<100 {
        let port = UInt16.random(in: 20_000...59_998)
        guard let first = try? Listener(binding: .tcp(host: "127.0.0.1", port: port)) else { continue }
        guard let second = try? Listener(binding: .tcp(host: "127.0.0.1", port: port + 1)) else { continue }
        first.close()
        second.close()
        return port
    }
    throw TestFailure("no free loopback port pair found")
}

/// Starts `argv[0]` with `argv`, stdout and stderr to /dev/null, with no
/// signal blocked or ignored (the test runner's threads block some, and a
/// child would inherit that and ignore SIGTERM).
func spawn(_ argv: [String]) throws -> pid_t {
    var pid: pid_t = 0
    var attributes = posix_spawnattr_t()
    posix_spawnattr_init(&attributes)
    defer { posix_spawnattr_destroy(&attributes) }
    var none = sigset_t()
    sigemptyset(&none)
    var all = sigset_t()
    sigfillset(&all)
    posix_spawnattr_setsigmask(&attributes, &none)
    posix_spawnattr_setsigdefault(&attributes, &all)
    posix_spawnattr_setflags(&attributes, Int16(POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF))
    var actions = posix_spawn_file_actions_t()
    posix_spawn_file_actions_init(&actions)
    defer { posix_spawn_file_actions_destroy(&actions) }
    posix_spawn_file_actions_addopen(&actions, 1, "/dev/null", O_WRONLY, 0)
    posix_spawn_file_actions_addopen(&actions, 2, "/dev/null", O_WRONLY, 0)
    let cArguments = argv.map { strdup($0) } + [nil]
    defer { for argument in cArguments { free(argument) } }
    let result = posix_spawn(&pid, argv[0], &actions, &attributes, cArguments, environ)
    guard result == 0 else { throw TestFailure("cannot start \(argv[0]): \(String(cString: strerror(result)))") }
    return pid
}
