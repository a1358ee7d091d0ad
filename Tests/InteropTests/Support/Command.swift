import Foundation
import TestScratch

/// What a finished command printed and how it ended.
struct CommandResult: CustomStringConvertible {
    let commandLine: String
    /// Exit status, or 128 + signal number when a signal ended it.
    let status: Int32
    let stdout: String
    let stderr: String

    var output: String { stdout + stderr }

    var description: String {
        "`\(commandLine)` exited with status \(status)\n--- stdout ---\n\(tail(stdout))\n--- stderr ---\n\(tail(stderr))"
    }
}

/// The last `limit` characters of `text`, so failure messages stay readable.
func tail(_ text: String, limit: Int = 4000) -> String {
    text.count <= limit ? text : "…" + String(text.suffix(limit))
}

/// Quotes `arguments` for messages, so a failing command can be pasted into a shell.
func shellLine(_ arguments: [String]) -> String {
    arguments.map { argument in
        let safe = argument.allSatisfy { $0.isLetter || $0.isNumber || "-_./=:,+@%".contains($0) }
        return safe && !argument.isEmpty ? argument : "'" + argument.replacingOccurrences(of: "'", with: "'\\''") + "'"
    }.joined(separator: " ")
}

/// Runs `command` (a program name or absolute path, then its arguments) to
/// completion and captures its output. Kills it with SIGKILL after `timeout`
/// seconds and throws, so no test can hang on a stuck client.
func run(_ command: [String], timeout: Double = 120) throws -> CommandResult {
    // Output goes to files rather than pipes: nothing can block on a full
    // pipe, and a helper that inherits the descriptors cannot hold a read open.
    let base = NSTemporaryDirectory() + "/bulkhead-cmd-" + UUID().uuidString
    let (outputPath, errorPath) = (base + ".out", base + ".err")
    defer {
        try? FileManager.default.removeItem(atPath: outputPath)
        try? FileManager.default.removeItem(atPath: errorPath)
    }
    let child = try ChildProcess(command, outputPath: outputPath, errorPath: errorPath)
    guard let status = child.waitForExit(seconds: timeout) else {
        child.stop(grace: 0)
        throw InteropError.commandTimedOut(
            command: child.commandLine, seconds: timeout, output: tail(readText(outputPath) + readText(errorPath)))
    }
    return CommandResult(commandLine: child.commandLine, status: status, stdout: readText(outputPath), stderr: readText(errorPath))
}

/// The contents of the file at `path` as text (invalid UTF-8 repaired), or "".
func readText(_ path: String) -> String {
    guard let data = FileManager.default.contents(atPath: path) else { return "" }
    return String(decoding: data, as: UTF8.self)
}
