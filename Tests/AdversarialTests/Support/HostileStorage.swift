import BlockDevice
import Logging
import NBDClient
import NBDServer
import Sockets
import TestSupport

/// A quiet logger: the scenarios provoke errors on purpose.
func quietLogger(_ label: String) -> Logger {
    var logger = Logger(label: label)
    logger.logLevel = .critical
    return logger
}

/// The hostile storage domain: a `HostileDevice` over memory, served by the
/// real `NBDServer` on a Unix socket in a temporary directory, as export "pool".
final class HostileStorage {
    let directory: TemporaryDirectory
    let memory: MemoryBlockDevice
    let device: HostileDevice
    private(set) var server: NBDServer
    let address: SocketAddress

    init(size: UInt64 = 16 << 20, seed: UInt64 = 1) throws {
        directory = try TemporaryDirectory("hostile")
        memory = try MemoryBlockDevice(size: size)
        device = HostileDevice(over: memory, seed: seed)
        address = .unix(path: directory.file("storage.sock"))
        server = try Self.serve(device, at: address)
    }

    private static func serve(_ device: HostileDevice, at address: SocketAddress) throws -> NBDServer {
        let server = try NBDServer(
            exports: [NBDExport(name: "pool", device: device)], defaultExport: "pool",
            configuration: NBDServerConfiguration(handshakeTimeout: 5, replyTimeout: 5, shutdownTimeout: 3),
            logger: quietLogger("hostile-storage"))
        server.start([try Listener(binding: address)])
        return server
    }

    /// The storage domain crashes and comes back on the same socket: every
    /// connection is cut and, with `losingCache`, writes not yet flushed are gone.
    func restart(losingCache: Bool) throws {
        server.shutdown()
        if losingCache { device.loseVolatileState() }
        server = try Self.serve(device, at: address)
    }

    /// The crypt domain's view of this storage: a remote device with short
    /// timeouts, so that every stall ends in an error within seconds.
    func connect(requestTimeout: Double = 1, retryWindow: Double = 2) throws -> RemoteBlockDevice {
        try RemoteBlockDevice(
            connectingTo: address, export: "pool",
            options: RemoteBlockDevice.Options(
                connection: NBDConnection.Options(
                    handshakeTimeout: 2, requestTimeout: requestTimeout, logger: quietLogger("crypt-client")),
                retryWindow: retryWindow, initialBackoff: 0.01, maxBackoff: 0.2))
    }

    /// Releases stalled requests and stops the server (bounded by its
    /// shutdown timeout).
    func stop() {
        device.releaseStalls()
        server.shutdown()
    }

    deinit { stop() }
}
