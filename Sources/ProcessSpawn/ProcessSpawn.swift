#if canImport(Glibc)
import Glibc
#endif

/// Why a program could not be started.
public struct SpawnError: Error, Sendable, CustomStringConvertible {
    public let description: String
    public init(_ description: String) { self.description = description }
}

/// Starting and reaping child processes with posix_spawn, shared by the
/// toolstack and the tests that run the real daemons.
///
/// Not Foundation's `Process`: on Linux it hands the spawning thread's
/// signal mask to the child, and a daemon that inherits a blocked SIGTERM
/// never stops. Here a child starts with an empty signal mask, default
/// dispositions and no descriptor but 0, 1, 2 and the ones handed to it.
public enum ProcessSpawn {
    /// Where a child's output goes.
    public struct Output: Sendable {
        /// stdout's file; nil: /dev/null.
        public var standardOutput: String?
        /// stderr's file; nil: the same as stdout.
        public var standardError: String?
        /// Truncate the files instead of appending.
        public var truncate: Bool

        public init(standardOutput: String? = nil, standardError: String? = nil, truncate: Bool = false) {
            self.standardOutput = standardOutput
            self.standardError = standardError
            self.truncate = truncate
        }
    }

    /// Spawns `argv` (argv[0] may differ from `executable`, e.g. "@name").
    /// `environment` replaces the child's environment when given (nil:
    /// inherited); `descriptors` maps a child descriptor number to a parent
    /// descriptor; `newSession` runs it in a session of its own.
    public static func spawn(
        executable: String, argv: [String], environment: [String: String]? = nil, output: Output = Output(),
        descriptors: [Int32: Int32] = [:], newSession: Bool = false
    ) throws(SpawnError) -> pid_t {
        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        let mode = O_WRONLY | O_CREAT | (output.truncate ? O_TRUNC : O_APPEND)
        posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0)
        posix_spawn_file_actions_addopen(&actions, 1, output.standardOutput ?? "/dev/null", mode, 0o640)
        if let standardError = output.standardError, standardError != output.standardOutput {
            posix_spawn_file_actions_addopen(&actions, 2, standardError, mode, 0o640)
        } else {
            posix_spawn_file_actions_adddup2(&actions, 1, 2)
        }
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
        // The parent runs many things at once (tests, supervised domains):
        // a child must not keep a socket or a file another part holds.
        guard closeFrom(highest, &actions) else {
            throw SpawnError("posix_spawn_file_actions_addclosefrom_np is missing (glibc 2.34 or later needed)")
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
        let cEnvironment: [UnsafeMutablePointer<CChar>?]? = environment.map { variables in
            variables.sorted { $0.key < $1.key }.map { strdup("\($0.key)=\($0.value)") } + [nil]
        }
        defer {
            cArguments.forEach { free($0) }
            cEnvironment?.forEach { free($0) }
        }
        var pid = pid_t()
        let result: Int32
        if var cEnvironment {
            result = posix_spawn(&pid, executable, &actions, &attributes, cArguments, &cEnvironment)
        } else {
            result = posix_spawn(&pid, executable, &actions, &attributes, cArguments, environ)
        }
        guard result == 0 else { throw SpawnError("cannot start \(executable): \(String(cString: strerror(result)))") }
        return pid
    }

    /// Reaps `pid` if it has ended: its exit status (128 + signal when a
    /// signal ended it), -1 if it is not a child (already reaped), nil while
    /// it runs.
    public static func reap(_ pid: pid_t) -> Int32? {
        var raw: Int32 = 0
        let result = waitpid(pid, &raw, WNOHANG)
        if result == pid { return exitStatus(raw) }
        if result < 0 && errno == ECHILD { return -1 }
        return nil
    }

    /// Waits at most `timeout` seconds for `pid` to end and reaps it: its
    /// status as `reap` gives it, nil if it runs on.
    public static func waitForExit(_ pid: pid_t, timeout: Double) -> Int32? {
        let deadline = monotonicNow() + timeout
        while true {
            if let status = reap(pid) { return status }
            if monotonicNow() >= deadline { return nil }
            usleep(2_000)
        }
    }

    /// The absolute path of a program: `name` itself if absolute, else the
    /// first executable of that name in PATH or the sbin and bin folders.
    public static func findExecutable(_ name: String) -> String? {
        if name.hasPrefix("/") { return name }
        let path = getenv("PATH").map { String(cString: $0) } ?? ""
        let folders = path.split(separator: ":").map(String.init)
            + ["/usr/local/sbin", "/usr/local/bin", "/usr/sbin", "/usr/bin", "/sbin", "/bin"]
        for folder in folders where !folder.isEmpty && access("\(folder)/\(name)", X_OK) == 0 {
            return "\(folder)/\(name)"
        }
        return nil
    }

    /// A wait status as an exit code, 128 + signal for a signal.
    public static func exitStatus(_ raw: Int32) -> Int32 {
        let signal = raw & 0x7f
        return signal == 0 ? (raw >> 8) & 0xff : 128 + signal
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
