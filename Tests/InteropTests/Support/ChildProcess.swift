import Foundation
import ProcessSpawn

/// A child process started with `ProcessSpawn` (clean signal mask and
/// descriptors), its output sent to files.
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

        do {
            pid = try ProcessSpawn.spawn(
                executable: executable, argv: [executable] + command.dropFirst(),
                output: ProcessSpawn.Output(standardOutput: outputPath, standardError: errorPath, truncate: true))
        } catch {
            throw InteropError.launchFailed(command: commandLine, reason: error.description)
        }
    }

    /// What the child has written to its output file so far.
    var log: String { readText(outputPath) }

    /// Exit status once the child has ended (128 + signal if a signal ended
    /// it), nil while it runs. Reaps the child.
    var status: Int32? {
        lock.withLock {
            if finalStatus == nil { finalStatus = ProcessSpawn.reap(pid) }
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
