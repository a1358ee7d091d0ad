import Foundation
import Sockets
import TestSupport
import Testing

/// A real nbdkit serving on a Unix socket in a temporary directory, killed
/// by pid when the test is done.
final class NBDKit: Sendable {
    /// Where nbdkit is, if installed.
    static let executable: String? = {
        for directory in (ProcessInfo.processInfo.environment["PATH"] ?? "/usr/bin:/bin").split(separator: ":") {
            let path = "\(directory)/nbdkit"
            if FileManager.default.isExecutableFile(atPath: path) { return path }
        }
        return nil
    }()

    /// Whether tests needing nbdkit run: always under CI=true, where a
    /// missing nbdkit must fail them rather than skip them.
    static let shouldRun = executable != nil || ProcessInfo.processInfo.environment["CI"] == "true"

    let socketPath: String
    let arguments: [String]
    let pid: pid_t
    private let exited = Locked(false)

    var address: SocketAddress { .unix(path: socketPath) }

    /// Starts `nbdkit --foreground --unix SOCKET --pidfile PIDFILE ARGUMENTS`
    /// and waits (at most 10 s) until it has written its pid file, which it
    /// does once it listens.
    init(socketPath: String, _ arguments: [String]) throws {
        guard let executable = Self.executable else {
            throw NBDKitError("nbdkit is not installed (needed by this test; install the nbdkit package)")
        }
        self.socketPath = socketPath
        self.arguments = arguments
        let pidFile = socketPath + ".pid"
        try? FileManager.default.removeItem(atPath: pidFile)
        // A socket left by a killed nbdkit would make it fail to bind.
        try? FileManager.default.removeItem(atPath: socketPath)
        let argv = [executable, "--foreground", "--exit-with-parent", "--unix", socketPath, "--pidfile", pidFile] + arguments
        pid = try spawn(argv)
        let started = eventually(timeout: 10) { FileManager.default.fileExists(atPath: pidFile) || !isRunning }
        guard started, isRunning, FileManager.default.fileExists(atPath: socketPath) else {
            stop()
            throw NBDKitError("nbdkit \(arguments.joined(separator: " ")) did not start")
        }
    }

    /// Whether the process is still alive; reaps it once it has exited.
    var isRunning: Bool {
        exited.withLock { exited in
            if exited { return false }
            var status: Int32 = 0
            if waitpid(pid, &status, WNOHANG) == pid { exited = true }
            return !exited
        }
    }

    /// Kills nbdkit abruptly (SIGKILL), as a crashing storage domain would die.
    func kill() {
        signal(SIGKILL)
    }

    /// Asks nbdkit to exit (SIGTERM), then kills it if it has not within
    /// half a second (it waits for clients still connected).
    func stop() {
        signal(SIGTERM, wait: 0.5)
        signal(SIGKILL)
    }

    private func signal(_ number: Int32, wait: Double = 5) {
        guard isRunning else { return }
        _ = Foundation.kill(pid, number)
        _ = eventually(timeout: wait) { !isRunning }
    }

    deinit { stop() }
}

/// Starts `argv[0]` with `argv`, inheriting stdout and stderr.
private func spawn(_ argv: [String]) throws -> pid_t {
    var pid: pid_t = 0
    let cArguments = argv.map { strdup($0) } + [nil]
    defer { for argument in cArguments { free(argument) } }
    let result = posix_spawn(&pid, argv[0], nil, nil, cArguments, environ)
    guard result == 0 else { throw NBDKitError("cannot start \(argv[0]): \(String(cString: strerror(result)))") }
    return pid
}

struct NBDKitError: Error, CustomStringConvertible {
    let description: String
    init(_ description: String) { self.description = description }
}
