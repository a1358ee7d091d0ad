import Foundation

/// Why a VM test could not run or what went wrong around the guest.
struct VMTestError: Error, CustomStringConvertible {
    let description: String
    init(_ description: String) { self.description = description }
}

/// A child process started with posix_spawn, stdout and stderr to one log
/// file, stdin from /dev/null. It starts with an empty signal mask, default
/// handlers and no descriptor but 0, 1 and 2 (other tests in this process
/// hold sockets and files a child must not keep open).
final class Child: @unchecked Sendable {
    let pid: pid_t
    let commandLine: String
    let logPath: String
    let started = Date()
    // Guarded by `lock`: set once, when the child has been reaped.
    private let lock = NSLock()
    private var reaped: Int32?

    init(_ command: [String], logPath: String) throws {
        guard let executable = command.first else { throw VMTestError("empty command") }
        commandLine = command.joined(separator: " ")
        self.logPath = logPath
        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0)
        posix_spawn_file_actions_addopen(&actions, 1, logPath, O_WRONLY | O_CREAT | O_APPEND, 0o644)
        posix_spawn_file_actions_adddup2(&actions, 1, 2)
        guard addCloseFrom(3, &actions) else { throw VMTestError("posix_spawn_file_actions_addclosefrom_np is missing (glibc 2.34 or later)") }
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
        let argv: [UnsafeMutablePointer<CChar>?] = command.map { strdup($0) } + [nil]
        defer { argv.forEach { free($0) } }
        var child = pid_t()
        let result = posix_spawnp(&child, executable, &actions, &attributes, argv, environ)
        guard result == 0 else { throw VMTestError("cannot start \(commandLine): \(String(cString: strerror(result)))") }
        pid = child
    }

    var log: String { readText(logPath) }

    /// The exit status once the child has ended (128 + signal when a signal
    /// ended it), nil while it runs. Reaps the child.
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

    /// Waits at most `seconds` for the child to end: its status, or nil if it still runs.
    func waitForExit(seconds: Double) -> Int32? {
        let deadline = Date().addingTimeInterval(seconds)
        while true {
            if let status { return status }
            if Date() >= deadline { return nil }
            usleep(10_000)
        }
    }

    /// SIGTERM, then SIGKILL after `grace` seconds; always reaps (bounded).
    @discardableResult
    func stop(grace: Double = 10) -> Int32 {
        if let status { return status }
        kill(pid, SIGTERM)
        if let status = waitForExit(seconds: grace) { return status }
        kill(pid, SIGKILL)
        return waitForExit(seconds: 10) ?? 128 + SIGKILL
    }
}

/// Runs `command` to completion within `timeout` seconds (killed and thrown
/// otherwise) and throws unless it exits 0; returns its output.
@discardableResult
func runChecked(_ command: [String], timeout: Double) throws -> String {
    let logPath = NSTemporaryDirectory() + "/bh-vm-cmd-" + UUID().uuidString
    defer { unlink(logPath) }
    let child = try Child(command, logPath: logPath)
    guard let status = child.waitForExit(seconds: timeout) else {
        child.stop(grace: 5)
        throw VMTestError("`\(child.commandLine)` did not finish within \(Int(timeout)) s:\n\(lastPart(child.log))")
    }
    guard status == 0 else { throw VMTestError("`\(child.commandLine)` exited with status \(status):\n\(lastPart(child.log))") }
    return child.log
}

func readText(_ path: String) -> String {
    guard let data = FileManager.default.contents(atPath: path) else { return "" }
    return String(decoding: data, as: UTF8.self)
}

func lastPart(_ text: String, limit: Int = 4000) -> String {
    text.count <= limit ? text : "…" + String(text.suffix(limit))
}

/// posix_spawn_file_actions_addclosefrom_np (glibc 2.34), looked up at run
/// time: Swift's Glibc module leaves out the GNU extensions of spawn.h.
private func addCloseFrom(_ lowest: Int32, _ actions: inout posix_spawn_file_actions_t) -> Bool {
    typealias Function = @convention(c) (UnsafeMutablePointer<posix_spawn_file_actions_t>, Int32) -> Int32
    guard let symbol = dlsym(UnsafeMutableRawPointer(bitPattern: 0), "posix_spawn_file_actions_addclosefrom_np") else { return false }
    return unsafeBitCast(symbol, to: Function.self)(&actions, lowest) == 0
}
