#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif
import ArgumentParser
import BlockDevice
import BulkheadVersion
import DaemonSupport
import Logging
import NBDServer
import Sockets

/// `bulkhead-storaged`: serves disks and image files over NBD.
struct Storaged: ParsableCommand {

    /// Exit status for malformed arguments (EX_USAGE).
    static let usageExitCode: Int32 = 64
    /// Exit status when an export or a listener cannot be set up.
    static let setupExitCode: Int32 = 1

    static let configuration = CommandConfiguration(
        commandName: "bulkhead-storaged",
        abstract: "Serve block devices and image files over NBD (the Bulkhead storage domain).",
        discussion: """
            Every export is offered on every listener. The first export also answers the \
            empty export name "", for clients that do not name one. The daemon exits with \
            status 0 on SIGTERM or SIGINT after closing its listeners (removing Unix socket \
            files); with status \(usageExitCode) for malformed arguments, and \(setupExitCode) \
            when an export cannot be opened or an address cannot be listened on. Logs go \
            to standard error.

            Example: bulkhead-storaged --listen unix:/run/bulkhead/storage.sock \
            --export disk0=/dev/nvme0n1 --export scratch=/var/lib/img.raw:ro
            """,
        version: BulkheadVersion.string)

    @Option(
        name: .customLong("listen"),
        help: ArgumentHelp(
            "Address to listen on: unix:PATH or tcp:HOST:PORT. Repeatable; at least one.", valueName: "address"))
    var listen: [String] = []

    @Option(
        name: .customLong("export"),
        help: ArgumentHelp(
            "Export a file or block device as NAME=PATH, read-only with NAME=PATH:ro. Repeatable; at least one. "
                + "The first export also answers the empty name \"\".",
            valueName: "name=path[:ro]"))
    var export: [String] = []

    @Flag(name: .customLong("direct"), help: "Open exports with O_DIRECT, bypassing the page cache.")
    var direct = false

    @Flag(
        name: .customLong("threaded"),
        help: ArgumentHelp(
            "Run every read and write on worker threads. By default those the page cache satisfies without waiting (any request on tmpfs) run on the connection's own thread, which costs less than a hand-off."
        ))
    var threaded = false

    @Option(
        name: .customLong("log-level"),
        help: ArgumentHelp("trace, debug, info, notice, warning, error or critical.", valueName: "level"))
    var logLevel = "info"

    // Tuning knobs for benchmarks, deliberately left out of --help.
    @Option(name: .customLong("workers"), help: .hidden)
    var workers = NBDServerConfiguration.defaultWorkersPerConnection

    @Option(name: .customLong("read-chunk"), help: .hidden)
    var readChunk = NBDServerConfiguration.defaultReadChunkSize

    mutating func run() throws {
        let plan = try checkArguments()
        LoggingSystem.bootstrap { label in
            var handler = StreamLogHandler.standardError(label: label)
            handler.logLevel = plan.level
            return handler
        }
        let logger = Logger(label: "bulkhead-storaged")
        let exports = try openExports(plan.exports)
        let listeners = try bind(plan.addresses)
        let server: NBDServer
        do {
            let configuration = NBDServerConfiguration(workersPerConnection: workers, readChunkSize: readChunk)
            server = try NBDServer(
                exports: exports, defaultExport: exports[0].name, configuration: configuration, logger: logger)
        } catch {
            listeners.forEach { $0.close() }
            throw fail("\(error)", status: Self.setupExitCode)
        }
        server.start(listeners)
        logger.info(
            "serving",
            metadata: [
                "exports": "\(exports.map(\.name).joined(separator: ","))", "version": "\(BulkheadVersion.string)",
            ])
        let signal = waitForTerminationSignal()
        logger.info("shutting down", metadata: ["signal": "\(signal)"])
        server.shutdown()
    }

    private struct Plan {
        var addresses: [SocketAddress]
        var exports: [ExportSpecification]
        var level: Logger.Level
    }

    /// Checks the syntax of every argument before anything is opened.
    private func checkArguments() throws -> Plan {
        guard !listen.isEmpty else { throw fail("at least one --listen address is required", status: Self.usageExitCode) }
        guard !export.isEmpty else { throw fail("at least one --export is required", status: Self.usageExitCode) }
        var addresses: [SocketAddress] = []
        for text in listen {
            do throws(SocketError) {
                addresses.append(try SocketAddress(parsing: text))
            } catch {
                throw fail("bad --listen: \(error)", status: Self.usageExitCode)
            }
        }
        var exports: [ExportSpecification] = []
        for text in export {
            let specification: ExportSpecification
            do throws(ExportSpecification.SyntaxError) {
                specification = try ExportSpecification(parsing: text)
            } catch {
                throw fail("\(error)", status: Self.usageExitCode)
            }
            guard !exports.contains(where: { $0.name == specification.name }) else {
                throw fail("duplicate export name \"\(specification.name)\"", status: Self.usageExitCode)
            }
            exports.append(specification)
        }
        guard (1...64).contains(workers), (4096...(16 << 20)).contains(readChunk) else {
            throw fail("--workers must be 1 to 64 and --read-chunk 4096 to 16777216", status: Self.usageExitCode)
        }
        guard let level = Logger.Level(rawValue: logLevel) else {
            throw fail(
                "bad --log-level \"\(logLevel)\": expected trace, debug, info, notice, warning, error or critical",
                status: Self.usageExitCode)
        }
        return Plan(addresses: addresses, exports: exports, level: level)
    }

    private func openExports(_ specifications: [ExportSpecification]) throws -> [NBDExport] {
        var exports: [NBDExport] = []
        for specification in specifications {
            do throws(BlockDeviceError) {
                let device = try FileBlockDevice(
                    path: specification.path, readOnly: specification.readOnly, direct: direct, threaded: threaded)
                exports.append(NBDExport(name: specification.name, device: device, readOnly: specification.readOnly))
            } catch {
                let reason: String
                if case .io(_, let code) = error {
                    reason = String(cString: strerror(code))
                } else {
                    reason = "\(error)"
                }
                throw fail("cannot open export \(specification.name): \(specification.path): \(reason)", status: Self.setupExitCode)
            }
        }
        return exports
    }

    /// Binds every address, or none: on failure the ones already bound are closed.
    private func bind(_ addresses: [SocketAddress]) throws -> [Listener] {
        var listeners: [Listener] = []
        for address in addresses {
            do throws(SocketError) {
                listeners.append(try Listener(binding: address))
            } catch {
                listeners.forEach { $0.close() }
                let message = error == .addressInUse(address.description) ? "\(error)" : "cannot listen on \(address): \(error)"
                throw fail(message, status: Self.setupExitCode)
            }
        }
        return listeners
    }

    /// Prints a one-line error to stderr and returns the exit to take.
    private func fail(_ message: String, status: Int32) -> ExitCode {
        let line = "bulkhead-storaged: \(message)\n"
        _ = line.utf8CString.withUnsafeBufferPointer { write(STDERR_FILENO, $0.baseAddress, $0.count - 1) }
        return ExitCode(status)
    }
}
