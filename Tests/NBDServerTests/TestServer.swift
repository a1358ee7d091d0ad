import BlockDevice
import Glibc
import Logging
import NBDServer
import Sockets
import TestSupport

extension TemporaryDirectory {
    /// A file of `size` zero bytes in the directory.
    func file(_ name: String, size: Int) -> String {
        let filePath = "\(path)/\(name)"
        let fd = open(filePath, O_CREAT | O_RDWR | O_TRUNC, 0o644)
        precondition(fd >= 0 && ftruncate(fd, off_t(size)) == 0)
        close(fd)
        return filePath
    }
}

/// Server logs are dropped unless BULKHEAD_TEST_LOGS is set.
let testLogger: Logger = {
    guard getenv("BULKHEAD_TEST_LOGS") != nil else {
        return Logger(label: "test-server", factory: { _ in SwiftLogNoOpLogHandler() })
    }
    var logger = Logger(label: "test-server", factory: { StreamLogHandler.standardError(label: $0) })
    logger.logLevel = .debug
    return logger
}()

/// An in-process NBDServer listening on a Unix socket in a temporary
/// directory (or on an ephemeral TCP port), shut down on deinit.
final class TestServer {
    let directory: TemporaryDirectory
    let server: NBDServer
    let address: SocketAddress
    let socketPath: String?

    init(
        exports: [NBDExport], defaultExport: String? = nil, tcp: Bool = false,
        configuration: NBDServerConfiguration = NBDServerConfiguration()
    ) throws {
        directory = try TemporaryDirectory()
        server = try NBDServer(
            exports: exports, defaultExport: defaultExport, configuration: configuration, logger: testLogger)
        let listener: Listener
        if tcp {
            listener = try Listener(binding: .tcp(host: "127.0.0.1", port: 0))
            address = .tcp(host: "127.0.0.1", port: listener.boundPort!)
            socketPath = nil
        } else {
            let path = "\(directory.path)/nbd.sock"
            listener = try Listener(binding: .unix(path: path))
            address = .unix(path: path)
            socketPath = path
        }
        server.start([listener])
    }

    /// A server with one writable memory export "mem" of `size` bytes.
    convenience init(memorySize: UInt64 = 1 << 20, tcp: Bool = false) throws {
        try self.init(
            exports: [NBDExport(name: "mem", device: try MemoryBlockDevice(size: memorySize))], defaultExport: "mem",
            tcp: tcp)
    }

    deinit { server.shutdown() }
}
