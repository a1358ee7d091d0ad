#if canImport(Glibc)
import Glibc
#endif
import Foundation
import ProcessSpawn

/// Starts programs with posix_spawn: an empty signal mask and default
/// dispositions (the caller blocks signals it waits for, and a child must
/// not inherit that), no descriptor but 0, 1, 2 and the ones handed to it,
/// optionally in a new session so it outlives a terminal.
public enum ProcessLaunch {
    /// Spawns `argv` (argv[0] may differ from `executable`, e.g. "@name").
    /// `descriptors` maps a child descriptor number to a parent descriptor;
    /// stdout and stderr go to `outputPath` (appended) or /dev/null.
    public static func spawn(
        executable: String, argv: [String], descriptors: [Int32: Int32] = [:], outputPath: String? = nil,
        newSession: Bool = false
    ) throws(ToolstackError) -> pid_t {
        do {
            return try ProcessSpawn.spawn(
                executable: executable, argv: argv, output: ProcessSpawn.Output(standardOutput: outputPath),
                descriptors: descriptors, newSession: newSession)
        } catch {
            throw ToolstackError(error.description)
        }
    }

    /// The result of a command run to completion.
    public struct Outcome: Sendable {
        public var status: Int32
        public var output: String
        public var succeeded: Bool { status == 0 }
    }

    /// Runs `argv` to completion (at most `timeout` seconds, then SIGKILL),
    /// capturing its combined output.
    public static func run(_ argv: [String], timeout: Double = 60) throws(ToolstackError) -> Outcome {
        let executable = try findExecutable(argv[0])
        let outputPath = "/tmp/bulkhead-run-\(getpid())-\(UInt32.random(in: 0...UInt32.max)).log"
        defer { unlink(outputPath) }
        let pid = try spawn(executable: executable, argv: argv, outputPath: outputPath)
        let status = waitForExit(pid, timeout: timeout) ?? {
            kill(pid, SIGKILL)
            return waitForExit(pid, timeout: 10) ?? 128 + SIGKILL
        }()
        let output = (try? String(contentsOfFile: outputPath, encoding: .utf8)) ?? ""
        return Outcome(status: status, output: output.trimmingCharacters(in: .whitespacesAndNewlines))
    }

    /// Waits at most `timeout` seconds for `pid` to end and reaps it: its
    /// exit status (128 + signal when a signal ended it), nil if it runs on.
    public static func waitForExit(_ pid: pid_t, timeout: Double) -> Int32? { ProcessSpawn.waitForExit(pid, timeout: timeout) }

    /// Reaps `pid` if it has ended: its status as above, nil while it runs.
    public static func reap(_ pid: pid_t) -> Int32? { ProcessSpawn.reap(pid) }

    /// The absolute path of a program, searched in PATH and the sbin folders.
    public static func findExecutable(_ name: String) throws(ToolstackError) -> String {
        guard let path = ProcessSpawn.findExecutable(name) else { throw ToolstackError("\(name) is not installed") }
        return path
    }
}
