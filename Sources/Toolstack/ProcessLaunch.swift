#if canImport(Glibc)
import Glibc
#endif
import Foundation

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
        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0)
        posix_spawn_file_actions_addopen(&actions, 1, outputPath ?? "/dev/null", O_WRONLY | O_CREAT | O_APPEND, 0o640)
        posix_spawn_file_actions_adddup2(&actions, 1, 2)
        // Parent descriptors are first moved above every target number, so
        // that placing one cannot overwrite another not yet placed.
        let highest = (descriptors.keys.max() ?? 2) + 1
        var staged: [(target: Int32, staged: Int32)] = []
        for (offset, (target, source)) in descriptors.sorted(by: { $0.key < $1.key }).enumerated() {
            let stage = highest + 64 + Int32(offset)
            posix_spawn_file_actions_adddup2(&actions, source, stage)
            staged.append((target, stage))
        }
        for (target, stage) in staged { posix_spawn_file_actions_adddup2(&actions, stage, target) }
        guard closeFrom(highest, &actions) else {
            throw ToolstackError("posix_spawn_file_actions_addclosefrom_np is missing (glibc 2.34 or later needed)")
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
        // POSIX_SPAWN_SETSID (glibc 2.26), absent from Swift's Glibc module.
        let setSessionFlag: Int32 = 0x80
        posix_spawnattr_setflags(
            &attributes, Int16(POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF | (newSession ? setSessionFlag : 0)))

        let cArguments: [UnsafeMutablePointer<CChar>?] = argv.map { strdup($0) } + [nil]
        defer { cArguments.forEach { free($0) } }
        var pid = pid_t()
        let result = posix_spawn(&pid, executable, &actions, &attributes, cArguments, environ)
        guard result == 0 else { throw ToolstackError("cannot start \(executable): \(systemMessage(result))") }
        return pid
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
    public static func waitForExit(_ pid: pid_t, timeout: Double) -> Int32? {
        let deadline = monotonicNow() + timeout
        while true {
            if let status = reap(pid) { return status }
            if monotonicNow() >= deadline { return nil }
            usleep(5_000)
        }
    }

    /// Reaps `pid` if it has ended: its status as above, nil while it runs.
    public static func reap(_ pid: pid_t) -> Int32? {
        var raw: Int32 = 0
        let result = waitpid(pid, &raw, WNOHANG)
        if result == pid { return exitStatus(raw) }
        if result < 0 && errno == ECHILD { return -1 }
        return nil
    }

    /// A wait status as an exit code, 128 + signal for a signal.
    static func exitStatus(_ raw: Int32) -> Int32 {
        let signal = raw & 0x7f
        return signal == 0 ? (raw >> 8) & 0xff : 128 + signal
    }

    /// The absolute path of a program, searched in PATH and the sbin folders.
    public static func findExecutable(_ name: String) throws(ToolstackError) -> String {
        if name.hasPrefix("/") { return name }
        let folders = (ProcessInfo.processInfo.environment["PATH"] ?? "").split(separator: ":").map(String.init)
            + ["/usr/local/sbin", "/usr/local/bin", "/usr/sbin", "/usr/bin", "/sbin", "/bin"]
        for folder in folders where !folder.isEmpty && access("\(folder)/\(name)", X_OK) == 0 {
            return "\(folder)/\(name)"
        }
        throw ToolstackError("\(name) is not installed")
    }
}

/// Seconds on the monotonic clock.
public func monotonicNow() -> Double {
    var now = timespec()
    clock_gettime(CLOCK_MONOTONIC, &now)
    return Double(now.tv_sec) + Double(now.tv_nsec) / 1e9
}

/// posix_spawn_file_actions_addclosefrom_np (glibc 2.34), looked up at run
/// time because Swift's Glibc module leaves out the GNU extensions of spawn.h.
private func closeFrom(_ lowest: Int32, _ actions: inout posix_spawn_file_actions_t) -> Bool {
    typealias Function = @convention(c) (UnsafeMutablePointer<posix_spawn_file_actions_t>, Int32) -> Int32
    guard let symbol = dlsym(UnsafeMutableRawPointer(bitPattern: 0), "posix_spawn_file_actions_addclosefrom_np") else {
        return false
    }
    return unsafeBitCast(symbol, to: Function.self)(&actions, lowest) == 0
}
