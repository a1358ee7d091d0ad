import Foundation

/// A child process started with posix_spawn, its stdout and stderr going to
/// one log file.
///
/// Foundation's `Process` is not used: on Linux it hands the spawning
/// thread's signal mask to the child, and a daemon that inherits a blocked
/// SIGTERM would never stop. Here the child starts with an empty mask,
/// default handlers and no descriptor but 0, 1 and 2.
final class Spawned: @unchecked Sendable {
    let pid: pid_t
    let commandLine: String
    let logPath: String
    let started = Date()
    // Guarded by `lock`: set once, when the child has been reaped.
    private let lock = NSLock()
    private var reaped: Int32?

    init(_ command: [String], logPath: String) throws {
        guard let first = command.first else { throw ChainError.setup("empty command") }
        let executable = first.hasPrefix("/") ? first : try Tools.path(of: first)
        commandLine = shellQuoted(command)
        self.logPath = logPath

        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0)
        posix_spawn_file_actions_addopen(&actions, 1, logPath, O_WRONLY | O_CREAT | O_APPEND, 0o644)
        posix_spawn_file_actions_adddup2(&actions, 1, 2)
        // Tests run concurrently in this process: a child must not inherit
        // descriptors another test holds (a socket, a file on a mount).
        guard addCloseFrom(3, &actions) else {
            throw ChainError.setup("posix_spawn_file_actions_addclosefrom_np is missing (glibc 2.34 or later needed)")
        }

        var attributes = posix_spawnattr_t()
        posix_spawnattr_init(&attributes)
        defer { posix_spawnattr_destroy(&attributes) }
        var mask = sigset_t()
        sigemptyset(&mask)
        posix_spawnattr_setsigmask(&attributes, &mask)
        var defaults = sigset_t()
        sigfillset(&defaults)
        sigdelset(&defaults, SIGKILL)
        sigdelset(&defaults, SIGSTOP)
        posix_spawnattr_setsigdefault(&attributes, &defaults)
        posix_spawnattr_setflags(&attributes, Int16(POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF))

        let argv: [UnsafeMutablePointer<CChar>?] = ([executable] + command.dropFirst()).map { strdup($0) } + [nil]
        defer { argv.forEach { free($0) } }
        var child = pid_t()
        let result = posix_spawn(&child, executable, &actions, &attributes, argv, environ)
        guard result == 0 else { throw ChainError.launchFailed(command: commandLine, reason: String(cString: strerror(result))) }
        pid = child
    }

    /// Everything the child has written so far.
    var log: String { readText(logPath) }

    /// The exit status once the child has ended (128 + signal number when a
    /// signal ended it), nil while it runs. Reaps the child.
    var status: Int32? {
        lock.withLock {
            if reaped == nil {
                var raw: Int32 = 0
                if waitpid(pid, &raw, WNOHANG) == pid {
                    let signal = raw & 0x7f
                    reaped = signal == 0 ? (raw >> 8) & 0xff : 128 + signal
                }
            }
            return reaped
        }
    }

    var isRunning: Bool { status == nil }

    /// Waits at most `seconds` for the child to end: its status, or nil if it still runs.
    func waitForExit(seconds: Double) -> Int32? {
        let deadline = Date().addingTimeInterval(seconds)
        while true {
            if let status { return status }
            if Date() >= deadline { return nil }
            usleep(2_000)
        }
    }

    /// SIGKILL now, then reap (bounded). A crash injected by a test.
    @discardableResult
    func kill9() -> Int32 {
        if let status { return status }
        kill(pid, SIGKILL)
        return waitForExit(seconds: 10) ?? 128 + SIGKILL
    }

    /// SIGTERM, then SIGKILL if the child has not ended within `grace`
    /// seconds. Returns the status and whether SIGKILL was needed.
    @discardableResult
    func terminate(grace: Double = 15) -> (status: Int32, killed: Bool) {
        if let status { return (status, false) }
        kill(pid, SIGTERM)
        if let status = waitForExit(seconds: grace) { return (status, false) }
        return (kill9(), true)
    }
}

/// posix_spawn_file_actions_addclosefrom_np (glibc 2.34), looked up at run
/// time because Swift's Glibc module leaves out the GNU extensions of spawn.h.
private func addCloseFrom(_ lowest: Int32, _ actions: inout posix_spawn_file_actions_t) -> Bool {
    typealias Function = @convention(c) (UnsafeMutablePointer<posix_spawn_file_actions_t>, Int32) -> Int32
    guard let symbol = dlsym(UnsafeMutableRawPointer(bitPattern: 0), "posix_spawn_file_actions_addclosefrom_np") else {
        return false
    }
    return unsafeBitCast(symbol, to: Function.self)(&actions, lowest) == 0
}
