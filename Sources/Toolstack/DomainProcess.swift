#if canImport(Glibc)
import ProcessSpawn
import Glibc
#endif
import Foundation
import LaunchMeasurement

/// A running domain: the process the supervisor waits for (setpriv, which
/// becomes bwrap, which waits for the domain) and the domain's own pid.
struct DomainProcess {
    /// The child of the supervisor; its exit is the domain's exit.
    var monitorPID: pid_t
    /// The domain itself, outside its PID namespace: signals go here.
    var pid: pid_t

    /// Starts `launch` as `identity` in its sandbox, its output appended to `logPath`.
    static func start(
        _ launch: DomainLaunch, identity: DomainIdentity, libraryDirectories: [String], logPath: String
    ) throws(ToolstackError) -> DomainProcess {
        let command = try SandboxCommand(launch: launch, identity: identity, libraryDirectories: libraryDirectories)
        guard launch.sandboxed else {
            let pid = try ProcessLaunch.spawn(executable: command.executable, argv: command.argv, outputPath: logPath, newSession: true)
            return DomainProcess(monitorPID: pid, pid: pid)
        }
        let filter = try SeccompFilter.compile(SyscallAllowlist.rules(for: launch.role))
        defer { close(filter) }
        let info = try closeOnExecPipe()
        let monitor: pid_t
        do {
            monitor = try ProcessLaunch.spawn(
                executable: command.executable, argv: command.argv,
                descriptors: [SandboxCommand.infoDescriptor: info[1], SandboxCommand.seccompDescriptor: filter],
                outputPath: logPath, newSession: true)
        } catch {
            close(info[0])
            close(info[1])
            throw error
        }
        close(info[1])
        defer { close(info[0]) }
        guard let pid = readChildPID(info[0], timeout: 15) else {
            kill(monitor, SIGKILL)
            _ = ProcessLaunch.waitForExit(monitor, timeout: 5)
            throw ToolstackError("the \(launch.role.rawValue) domain's sandbox did not start: \(tail(of: logPath))")
        }
        return DomainProcess(monitorPID: monitor, pid: pid)
    }

    /// Reads bwrap's {"child-pid": N} from its info descriptor.
    private static func readChildPID(_ fd: Int32, timeout: Double) -> pid_t? {
        var text = ""
        let deadline = monotonicNow() + timeout
        var buffer = [UInt8](repeating: 0, count: 4096)
        while monotonicNow() < deadline, !text.contains("}") {
            var poller = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
            guard poll(&poller, 1, 100) >= 0 else { return nil }
            guard poller.revents != 0 else { continue }
            let count = buffer.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
            if count <= 0 { break }
            text += String(decoding: buffer[0..<count], as: UTF8.self)
            guard text.utf8.count < 65536 else { return nil }
        }
        struct Info: Decodable {
            var childPID: Int32
            enum CodingKeys: String, CodingKey { case childPID = "child-pid" }
        }
        return (try? JSONDecoder().decode(Info.self, from: Data(text.utf8)))?.childPID
    }
}

/// The last lines of a log file, on one line, for an error message.
func tail(of path: String, lines: Int = 4) -> String {
    let text = (try? String(contentsOfFile: path, encoding: .utf8)) ?? ""
    let last = text.split(separator: "\n").suffix(lines).joined(separator: " | ")
    return last.isEmpty ? "(no output in \(path))" : "\(last) (\(path))"
}

/// How a process ended, in words.
func describeExit(_ status: Int32) -> String {
    guard status > 128 else { return "exited with status \(status)" }
    let signal = status - 128
    let names: [Int32: String] = [
        SIGKILL: "SIGKILL", SIGTERM: "SIGTERM", SIGSEGV: "SIGSEGV", SIGABRT: "SIGABRT", SIGILL: "SIGILL",
        SIGBUS: "SIGBUS", SIGTRAP: "SIGTRAP", SIGINT: "SIGINT",
    ]
    if signal == SIGSYS { return "killed by signal \(signal) (SIGSYS): a system call outside its seccomp allowlist" }
    return "killed by signal \(signal) (\(names[signal] ?? "signal \(signal)"))"
}
