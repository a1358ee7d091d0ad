import Foundation
import TestScratch

/// How a finished command ended and what it printed (stdout and stderr interleaved).
struct CommandResult: CustomStringConvertible {
    let commandLine: String
    /// Exit status, or 128 + signal number when a signal ended it.
    let status: Int32
    let output: String
    let seconds: Double

    var succeeded: Bool { status == 0 }

    var description: String {
        "`\(commandLine)` exited with status \(status) after \(String(format: "%.2f", seconds)) s; output:\n\(lastPart(output))"
    }
}

/// The end of `text`, so failure messages stay readable.
func lastPart(_ text: String, limit: Int = 3000) -> String {
    text.count <= limit ? text : "…" + String(text.suffix(limit))
}

/// `arguments` as a line that can be pasted into a shell.
func shellQuoted(_ arguments: [String]) -> String {
    arguments.map { argument in
        let plain = !argument.isEmpty && argument.allSatisfy { $0.isLetter || $0.isNumber || "-_./=:,+@%".contains($0) }
        return plain ? argument : "'" + argument.replacingOccurrences(of: "'", with: "'\\''") + "'"
    }.joined(separator: " ")
}

/// Runs `command` to completion, killing it and throwing after `timeout`
/// seconds so that no test can hang on a stuck client. Output goes through
/// a file, never a pipe that could fill up.
func run(_ command: [String], timeout: Double = 60) throws -> CommandResult {
    let logPath = NSTemporaryDirectory() + "/bh-chain-cmd-" + UUID().uuidString
    defer { unlink(logPath) }
    let child = try ChildProcess(command, logPath: logPath)
    guard let status = child.waitForExit(seconds: timeout) else {
        child.kill9()
        throw ChainError.timedOut(command: child.commandLine, seconds: timeout, output: lastPart(child.log))
    }
    return CommandResult(
        commandLine: child.commandLine, status: status, output: child.log, seconds: Date().timeIntervalSince(child.started))
}

/// Runs `command` and throws unless it exits 0.
@discardableResult
func runChecked(_ command: [String], timeout: Double = 60) throws -> CommandResult {
    let result = try run(command, timeout: timeout)
    guard result.succeeded else { throw ChainError.commandFailed(result) }
    return result
}

/// The contents of `path` as text (invalid UTF-8 repaired), or "".
func readText(_ path: String) -> String {
    guard let data = FileManager.default.contents(atPath: path) else { return "" }
    return String(decoding: data, as: UTF8.self)
}
