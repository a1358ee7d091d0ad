import Foundation
import ProcessSpawn

/// A child process started with `ProcessSpawn` (clean signal mask and
/// descriptors), stdin from /dev/null, its output going to files. Shared by
/// the test targets that run real processes.
public final class ChildProcess: @unchecked Sendable {
    public let pid: pid_t
    public let commandLine: String
    public let outputPath: String
    public let started = Date()
    // Guarded by `lock`: set once, when the child has been reaped.
    private let lock = NSLock()
    private var reaped: Int32?

    /// Starts `executable` (an absolute path) with `arguments`, stdout to
    /// `outputPath` and stderr to `errorPath` (the same file if nil);
    /// `commandLine` names the child in messages.
    public init(
        executable: String, arguments: [String], commandLine: String, outputPath: String, errorPath: String? = nil,
        truncate: Bool = false
    ) throws {
        self.commandLine = commandLine
        self.outputPath = outputPath
        do {
            pid = try ProcessSpawn.spawn(
                executable: executable, argv: [executable] + arguments,
                output: ProcessSpawn.Output(standardOutput: outputPath, standardError: errorPath, truncate: truncate))
        } catch {
            throw ScratchError(description: "cannot start `\(commandLine)`: \(error)")
        }
    }

    /// Everything the child has written to its output file so far (invalid
    /// UTF-8 repaired).
    public var log: String { String(decoding: FileManager.default.contents(atPath: outputPath) ?? Data(), as: UTF8.self) }

    /// The exit status once the child has ended (128 + signal number when a
    /// signal ended it), nil while it runs. Reaps the child.
    public var status: Int32? {
        lock.withLock {
            if reaped == nil { reaped = ProcessSpawn.reap(pid) }
            return reaped
        }
    }

    public var isRunning: Bool { status == nil }

    /// Waits at most `seconds` for the child to end: its status, or nil if it still runs.
    public func waitForExit(seconds: Double) -> Int32? {
        let deadline = Date().addingTimeInterval(seconds)
        while true {
            if let status { return status }
            if Date() >= deadline { return nil }
            usleep(2_000)
        }
    }

    /// SIGKILL now, then reap (bounded). A crash injected by a test.
    @discardableResult
    public func kill9() -> Int32 {
        if let status { return status }
        kill(pid, SIGKILL)
        return waitForExit(seconds: 10) ?? 128 + SIGKILL
    }

    /// SIGTERM, then SIGKILL if the child has not ended within `grace`
    /// seconds. Returns the status and whether SIGKILL was needed. Safe to
    /// call again.
    @discardableResult
    public func stop(grace: Double = 10) -> (status: Int32, killed: Bool) {
        if let status { return (status, false) }
        kill(pid, SIGTERM)
        if let status = waitForExit(seconds: grace) { return (status, false) }
        return (kill9(), true)
    }
}
