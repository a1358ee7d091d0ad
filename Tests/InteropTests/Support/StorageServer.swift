import Foundation
import Sockets
import TestScratch
import Testing

/// One export handed to the server: `--export NAME=PATH[:ro]`.
struct Export {
    let name: String
    let path: String
    var readOnly = false

    var argument: String { "\(name)=\(path)\(readOnly ? ":ro" : "")" }
}

/// A `bulkhead-storaged` process serving `exports` on a Unix socket inside a
/// test's scratch folder. Starting waits (bounded) until the socket accepts;
/// `stop` sends SIGTERM and records an issue if the server had died earlier.
final class StorageServer {
    let socketPath: String
    let process: ChildProcess
    private var stopped = false

    /// Seconds to wait for the socket to accept after launch.
    static let readyTimeout = 10.0

    init(exports: [Export], in scratch: Scratch, extraArguments: [String] = []) throws {
        socketPath = scratch.file("nbd.sock")
        let command = try Self.command(socket: socketPath, exports: exports) + extraArguments
        let logPath = scratch.file("server.log")
        process = try ChildProcess(command, outputPath: logPath, errorPath: logPath)
        do {
            try waitUntilAccepting()
        } catch {
            process.stop()
            throw error
        }
    }

    /// The command line that serves `exports` on `socket`.
    static func command(socket: String, exports: [Export]) throws -> [String] {
        [try storagedPath(), "--listen", "unix:" + socket] + exports.flatMap { ["--export", $0.argument] }
    }

    /// The built `bulkhead-storaged`: `BULKHEAD_STORAGED` if set, else the
    /// one beside the test bundle (`.build/<triple>/debug/`).
    static func storagedPath() throws -> String {
        if let path = ProcessInfo.processInfo.environment["BULKHEAD_STORAGED"] { return path }
        let bundle = try FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/exe")
        let path = URL(fileURLWithPath: bundle).deletingLastPathComponent().appendingPathComponent("bulkhead-storaged").path
        guard FileManager.default.isExecutableFile(atPath: path) else { throw InteropError.storagedNotBuilt(path: path) }
        return path
    }

    /// `nbd+unix:///NAME?socket=SOCK`, the URI form every libnbd and QEMU tool accepts.
    func uri(_ export: String) -> String { "nbd+unix:///\(export)?socket=\(socketPath)" }

    var log: String { process.log }

    private func waitUntilAccepting() throws {
        let deadline = Date().addingTimeInterval(Self.readyTimeout)
        while true {
            if let status = process.status {
                throw InteropError.serverExited(command: process.commandLine, status: status, log: tail(log))
            }
            if (try? Socket.connect(to: .unix(path: socketPath))) != nil { return }
            if Date() > deadline {
                throw InteropError.serverNotReady(
                    command: process.commandLine, socket: socketPath, seconds: Self.readyTimeout, log: tail(log))
            }
            usleep(20_000)
        }
    }

    /// Stops the server with SIGTERM (SIGKILL after 10 s). Records an issue
    /// if it had already exited on its own: a crash during a test must not
    /// pass unnoticed.
    @discardableResult
    func stop() -> (status: Int32, killed: Bool) {
        if stopped { return process.stop() }
        stopped = true
        if let status = process.status {
            Issue.record("the server exited on its own with status \(status) during the test: `\(process.commandLine)`\n\(tail(log))")
            return (status, false)
        }
        return process.stop()
    }

    /// Records an issue carrying `result` and the server log unless the command succeeded.
    func expectSuccess(_ result: CommandResult, sourceLocation: SourceLocation = #_sourceLocation) {
        #expect(result.status == 0, "\(result)\n--- server log ---\n\(tail(log, limit: 2000))", sourceLocation: sourceLocation)
    }
}
