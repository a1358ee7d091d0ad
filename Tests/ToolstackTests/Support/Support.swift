import ProcessSpawn
import Foundation
import LaunchMeasurement
import Toolstack

struct TestFailure: Error, CustomStringConvertible {
    let description: String
    init(_ description: String) { self.description = description }
}

/// A folder under /tmp, mode 0755 (the domains' users must reach their
/// grants through it), removed on deinit.
final class Scratch: Sendable {
    let path: String

    init() throws {
        var template = Array("/tmp/bulkhead-toolstack-XXXXXX".utf8CString)
        guard let result = template.withUnsafeMutableBufferPointer({ mkdtemp($0.baseAddress!) }) else {
            throw TestFailure("mkdtemp: \(String(cString: strerror(errno)))")
        }
        path = String(cString: result)
        chmod(path, 0o755)
    }

    func file(_ name: String) -> String { path + "/" + name }

    func folder(_ name: String) throws -> String {
        try FileManager.default.createDirectory(atPath: file(name), withIntermediateDirectories: true)
        return file(name)
    }

    deinit { try? FileManager.default.removeItem(atPath: path) }
}

/// A program built by this package, beside the test bundle.
func built(_ program: String) throws -> String {
    let bundle = try FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/exe")
    let path = URL(fileURLWithPath: bundle).deletingLastPathComponent().appendingPathComponent(program).path
    guard FileManager.default.isExecutableFile(atPath: path) else { throw TestFailure("\(program) is not built at \(path)") }
    return path
}

/// The path of an installed tool; a missing one fails the test (never skips).
func tool(_ name: String, package: String) throws -> String {
    do { return try ProcessLaunch.findExecutable(name) } catch {
        throw TestFailure("\(name) is not installed (apt package \(package))")
    }
}

/// Runs a command to completion with a bound.
@discardableResult
func run(_ argv: [String], timeout: Double = 120) throws -> ProcessLaunch.Outcome {
    try ProcessLaunch.run(argv, timeout: timeout)
}

/// Runs a command and fails unless it succeeds.
@discardableResult
func runChecked(_ argv: [String], timeout: Double = 120) throws -> ProcessLaunch.Outcome {
    let outcome = try run(argv, timeout: timeout)
    guard outcome.succeeded else { throw TestFailure("\(argv.joined(separator: " ")) exited \(outcome.status): \(outcome.output)") }
    return outcome
}

/// Root, bwrap, setpriv: what booting with the sandbox needs.
func requireBootPrivileges() throws {
    guard getuid() == 0 else { throw TestFailure("bulkhead boot needs root (it changes user and mounts)") }
    _ = try tool("bwrap", package: "bubblewrap")
    _ = try tool("setpriv", package: "util-linux")
}

/// Unmounts `point`, retrying while busy, lazily as a last resort.
func unmount(_ point: String) {
    for _ in 0..<50 {
        if (try? run(["umount", point]))?.succeeded == true { return }
        usleep(100_000)
    }
    _ = try? run(["umount", "-l", point])
}

/// Whether `path` is a mount point now.
func isMounted(_ path: String) -> Bool {
    let mounts = (try? String(contentsOfFile: "/proc/self/mounts", encoding: .utf8)) ?? ""
    return mounts.split(separator: "\n").contains { $0.split(separator: " ").dropFirst().first.map(String.init) == path }
}
