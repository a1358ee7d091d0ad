import Foundation

/// A child process started with posix_spawn, its output sent to files.
///
/// Not Foundation's `Process`: on Linux it passes the spawning thread's
/// signal mask on, and test threads block SIGTERM, so a server started that
/// way never sees the SIGTERM that stops it. Here the child starts with no
/// signal blocked and default handlers.
final class ChildProcess: @unchecked Sendable {
    let pid: pid_t
    let commandLine: String
    let outputPath: String
    // Guarded by `lock`: set once, when the child has been reaped.
    private let lock = NSLock()
    private var finalStatus: Int32?

    /// Starts `command` (a program name or absolute path, then its arguments)
    /// with stdin from /dev/null, stdout to `outputPath` and stderr to
    /// `errorPath` (the same file if equal).
    init(_ command: [String], outputPath: String, errorPath: String) throws {
        guard let program = command.first else { throw InteropError.setupFailed("empty command") }
        let executable = program.hasPrefix("/") ? program : try Tools.path(of: program)
        commandLine = shellLine(command)
        self.outputPath = outputPath

        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0)
        posix_spawn_file_actions_addopen(&actions, 1, outputPath, O_WRONLY | O_CREAT | O_TRUNC, 0o644)
        if errorPath == outputPath {
            posix_spawn_file_actions_adddup2(&actions, 1, 2)
        } else {
            posix_spawn_file_actions_addopen(&actions, 2, errorPath, O_WRONLY | O_CREAT | O_TRUNC, 0o644)
        }
        // Tests run in parallel in one process: without this a child would
        // inherit whatever descriptors other tests hold open at that moment
        // (a file on a loop-mounted ext4 keeps that mount busy).
        guard closeFrom(3, in: &actions) else {
            throw InteropError.setupFailed("posix_spawn_file_actions_addclosefrom_np is missing (needs glibc 2.34)")
        }

        var attributes = posix_spawnattr_t()
        posix_spawnattr_init(&attributes)
        defer { posix_spawnattr_destroy(&attributes) }
        var unblocked = sigset_t()
        sigemptyset(&unblocked)
        posix_spawnattr_setsigmask(&attributes, &unblocked)
        var defaults = sigset_t()
        sigemptyset(&defaults)
        for signal in [SIGTERM, SIGINT, SIGHUP, SIGQUIT, SIGPIPE, SIGCHLD, SIGUSR1, SIGUSR2, SIGALRM] {
            sigaddset(&defaults, signal)
        }
        posix_spawnattr_setsigdefault(&attributes, &defaults)
        posix_spawnattr_setflags(&attributes, Int16(POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF))

        let argv: [UnsafeMutablePointer<CChar>?] = ([executable] + command.dropFirst()).map { strdup($0) } + [nil]
        defer { argv.forEach { free($0) } }
        var child = pid_t()
        let result = posix_spawn(&child, executable, &actions, &attributes, argv, environ)
        guard result == 0 else {
            throw InteropError.launchFailed(command: commandLine, reason: String(cString: strerror(result)))
        }
        pid = child
    }

    /// What the child has written to its output file so far.
    var log: String { readText(outputPath) }

    /// Exit status once the child has ended (128 + signal if a signal ended
    /// it), nil while it runs. Reaps the child.
    var status: Int32? {
        lock.withLock {
            if finalStatus == nil {
                var raw: Int32 = 0
                if waitpid(pid, &raw, WNOHANG) == pid {
                    let signal = raw & 0x7f
                    finalStatus = signal == 0 ? (raw >> 8) & 0xff : 128 + signal
                }
            }
            return finalStatus
        }
    }

    /// Waits up to `seconds` for the child to end; its status, or nil if it still runs.
    func waitForExit(seconds: Double) -> Int32? {
        let deadline = Date().addingTimeInterval(seconds)
        while true {
            if let status { return status }
            if Date() > deadline { return nil }
            usleep(5_000)
        }
    }

    /// Sends SIGTERM, waits up to `grace` seconds, then SIGKILLs. Returns the
    /// exit status and whether SIGKILL was needed. Safe to call again.
    @discardableResult
    func stop(grace: Double = 10) -> (status: Int32, killed: Bool) {
        if let status { return (status, false) }
        kill(pid, SIGTERM)
        if let status = waitForExit(seconds: grace) { return (status, false) }
        kill(pid, SIGKILL)
        return (waitForExit(seconds: 10) ?? 128 + SIGKILL, true)
    }
}

/// posix_spawn_file_actions_addclosefrom_np (glibc 2.34): closes every
/// descriptor from `lowest` up in the child. Looked up at run time because
/// Swift's Glibc module does not declare the GNU extensions of spawn.h.
private func closeFrom(_ lowest: Int32, in actions: inout posix_spawn_file_actions_t) -> Bool {
    typealias AddCloseFrom = @convention(c) (UnsafeMutablePointer<posix_spawn_file_actions_t>, Int32) -> Int32
    guard let symbol = dlsym(UnsafeMutableRawPointer(bitPattern: 0), "posix_spawn_file_actions_addclosefrom_np") else {
        return false
    }
    let addCloseFrom = unsafeBitCast(symbol, to: AddCloseFrom.self)
    return addCloseFrom(&actions, lowest) == 0
}
