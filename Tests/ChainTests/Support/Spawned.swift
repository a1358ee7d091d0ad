import Foundation
import ProcessSpawn

/// A child process started with `ProcessSpawn` (clean signal mask and
/// descriptors), its stdout and stderr going to one log file.
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

        do {
            pid = try ProcessSpawn.spawn(
                executable: executable, argv: [executable] + command.dropFirst(),
                output: ProcessSpawn.Output(standardOutput: logPath))
        } catch {
            throw ChainError.launchFailed(command: commandLine, reason: error.description)
        }
    }

    /// Everything the child has written so far.
    var log: String { readText(logPath) }

    /// The exit status once the child has ended (128 + signal number when a
    /// signal ended it), nil while it runs. Reaps the child.
    var status: Int32? {
        lock.withLock {
            if reaped == nil { reaped = ProcessSpawn.reap(pid) }
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
