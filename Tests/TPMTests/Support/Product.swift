import Foundation
import ProcessSpawn
import TestSupport

/// A program built by this package, beside the test bundle (`.build/<triple>/debug/`).
func built(_ program: String) throws -> String {
    let bundle = try FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/exe")
    let path = URL(fileURLWithPath: bundle).deletingLastPathComponent().appendingPathComponent(program).path
    guard FileManager.default.isExecutableFile(atPath: path) else { throw TestFailure("\(program) is not built at \(path) (swift build)") }
    return path
}

/// A program from PATH or the sbin folders; missing is a failure, never a skip.
func tool(_ name: String, package: String) throws -> String {
    let folders = (ProcessInfo.processInfo.environment["PATH"] ?? "").split(separator: ":").map(String.init) + ["/usr/sbin", "/usr/bin", "/sbin", "/bin"]
    for folder in folders where FileManager.default.isExecutableFile(atPath: folder + "/" + name) { return folder + "/" + name }
    throw TestFailure("\(name) is not installed (Debian package \(package))")
}

/// A child process whose stdout and stderr go to a log file, started with no
/// blocked or ignored signal and no descriptor but 0, 1 and 2 inherited.
final class Child: @unchecked Sendable {
    let pid: pid_t
    let argv: [String]
    let logPath: String
    private let lock = NSLock()
    private var reaped: Int32?

    init(_ argv: [String], logPath: String, environment: [String: String] = [:]) throws {
        self.argv = argv
        self.logPath = logPath
        var variables = ProcessInfo.processInfo.environment
        for (key, value) in environment { variables[key] = value }
        do {
            pid = try ProcessSpawn.spawn(
                executable: argv[0], argv: argv, environment: variables, output: ProcessSpawn.Output(standardOutput: logPath))
        } catch {
            throw TestFailure("\(error)")
        }
    }

    deinit { terminate() }

    var log: String { (try? String(contentsOfFile: logPath, encoding: .utf8)) ?? "" }

    /// The exit status once ended (128 + signal when a signal ended it); reaps.
    var status: Int32? {
        lock.withLock {
            if reaped == nil { reaped = ProcessSpawn.reap(pid) }
            return reaped
        }
    }

    func waitForExit(seconds: Double) -> Int32? {
        _ = eventually(timeout: seconds) { status != nil }
        return status
    }

    /// SIGTERM, then SIGKILL after `grace` seconds; the exit status.
    @discardableResult
    func terminate(grace: Double = 20) -> Int32 {
        if let status { return status }
        kill(pid, SIGCONT)
        kill(pid, SIGTERM)
        if let status = waitForExit(seconds: grace) { return status }
        kill(pid, SIGKILL)
        return waitForExit(seconds: 10) ?? 128 + SIGKILL
    }

    /// Whether the process is stopped (state T in /proc/PID/stat).
    var isStopped: Bool {
        let stat = (try? String(contentsOfFile: "/proc/\(pid)/stat", encoding: .utf8)) ?? ""
        guard let close = stat.lastIndex(of: ")") else { return false }
        return stat[stat.index(after: close)...].trimmingCharacters(in: .whitespaces).hasPrefix("T")
    }
}

/// How a command ended and what it printed.
struct Finished: CustomStringConvertible {
    let argv: [String]
    let status: Int32
    let output: String
    var description: String { "`\(argv.joined(separator: " "))` exited \(status):\n\(output.suffix(3000))" }
}

/// Runs a command to its end, killing it after `timeout` seconds.
func run(_ argv: [String], in directory: TemporaryDirectory, timeout: Double = 120, environment: [String: String] = [:]) throws -> Finished {
    let log = directory.file("cmd-\(UUID().uuidString).log")
    defer { unlink(log) }
    let child = try Child(argv, logPath: log, environment: environment)
    guard let status = child.waitForExit(seconds: timeout) else {
        child.terminate(grace: 1)
        throw TestFailure("`\(argv.joined(separator: " "))` did not end within \(Int(timeout)) s:\n\(child.log.suffix(3000))")
    }
    return Finished(argv: argv, status: status, output: child.log)
}

@discardableResult
func runChecked(_ argv: [String], in directory: TemporaryDirectory, timeout: Double = 120) throws -> Finished {
    let result = try run(argv, in: directory, timeout: timeout)
    guard result.status == 0 else { throw TestFailure(result.description) }
    return result
}

/// Whether `needle` occurs in a writable or anonymous mapping of process
/// `pid` (read through /proc/PID/mem, as root): where a key would live.
func memoryContains(pid: pid_t, _ needle: [UInt8]) throws -> Bool {
    guard let maps = try? String(contentsOfFile: "/proc/\(pid)/maps", encoding: .utf8) else {
        throw TestFailure("cannot read /proc/\(pid)/maps")
    }
    let fd = open("/proc/\(pid)/mem", O_RDONLY)
    guard fd >= 0 else { throw TestFailure("cannot open /proc/\(pid)/mem: \(String(cString: strerror(errno)))") }
    defer { close(fd) }
    var scanned = 0
    for line in maps.split(separator: "\n") {
        let fields = line.split(separator: " ", omittingEmptySubsequences: true)
        guard fields.count >= 5 else { continue }
        let permissions = fields[1]
        let path = fields.count >= 6 ? String(fields[5]) : ""
        guard permissions.hasPrefix("r"), permissions.contains("w") || path.isEmpty || path.hasPrefix("[") else { continue }
        guard path != "[vvar]", path != "[vsyscall]" else { continue }
        let bounds = fields[0].split(separator: "-").compactMap { UInt64($0, radix: 16) }
        guard bounds.count == 2 else { continue }
        var offset = bounds[0]
        var chunk = [UInt8](repeating: 0, count: 1 << 20)
        var carry: [UInt8] = []
        while offset < bounds[1] {
            let length = Int(min(UInt64(chunk.count), bounds[1] - offset))
            let got = chunk.withUnsafeMutableBytes { pread(fd, $0.baseAddress, length, off_t(offset)) }
            if got <= 0 { break }
            scanned += got
            let window = carry + chunk.prefix(got)
            if contains(window, needle) { return true }
            carry = Array(window.suffix(needle.count - 1))
            offset += UInt64(got)
        }
    }
    guard scanned > 0 else { throw TestFailure("read nothing of process \(pid)'s memory") }
    return false
}

/// Whether `haystack` contains `needle` (memchr for candidates, then compare).
func contains(_ haystack: [UInt8], _ needle: [UInt8]) -> Bool {
    guard !needle.isEmpty, haystack.count >= needle.count else { return false }
    return haystack.withUnsafeBytes { raw in
        var start = 0
        let last = haystack.count - needle.count
        while start <= last {
            guard let found = memchr(raw.baseAddress! + start, Int32(needle[0]), last - start + 1) else { return false }
            let position = raw.baseAddress!.distance(to: found)
            if memcmp(found, needle, needle.count) == 0 { return true }
            start = position + 1
        }
        return false
    }
}

/// The lines of `text` that start with `prefix`.
func lines(of text: String, startingWith prefix: String) -> [String] {
    text.split(separator: "\n").map(String.init).filter { $0.hasPrefix(prefix) }
}
