import Foundation
import ProcessSpawn

/// Why a VM test could not run or what went wrong around the guest.
struct VMTestError: Error, CustomStringConvertible {
    let description: String
    init(_ description: String) { self.description = description }
}

/// A child process started with `ProcessSpawn` (clean signal mask and
/// descriptors), stdout and stderr to one log file, stdin from /dev/null.
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
        guard let path = ProcessSpawn.findExecutable(executable) else { throw VMTestError("\(executable) is not installed") }
        do {
            pid = try ProcessSpawn.spawn(executable: path, argv: command, output: ProcessSpawn.Output(standardOutput: logPath))
        } catch {
            throw VMTestError("cannot start \(commandLine): \(error)")
        }
    }

    var log: String { readText(logPath) }

    /// The exit status once the child has ended (128 + signal when a signal
    /// ended it), nil while it runs. Reaps the child.
    var status: Int32? {
        lock.withLock {
            if reaped == nil { reaped = ProcessSpawn.reap(pid) }
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
