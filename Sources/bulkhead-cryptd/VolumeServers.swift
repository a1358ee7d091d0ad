import CryptPool
import Foundation
import Logging
import NBDServer
import Sockets
import Synchronization

/// The NBD servers of the served volumes, one socket each
/// (SERVE_DIR/NAME.sock), started and stopped as volumes come and go.
final class VolumeServers: Sendable {
    /// Threads serving one consumer connection: requests here wait on the
    /// storage domain, not on the CPU, so enough workers keep a QD32
    /// consumer's requests all in flight.
    static let workersPerConnection = 32

    let pool: Pool
    let directory: String
    let allowedUIDs: Set<UInt32>
    let logger: Logger
    private let servers = Mutex<[String: NBDServer]>([:])

    init(pool: Pool, directory: String, allowedUIDs: Set<UInt32>, logger: Logger) {
        self.pool = pool
        self.directory = directory
        self.allowedUIDs = allowedUIDs
        self.logger = logger
    }

    var served: Set<String> { servers.withLock { Set($0.keys) } }

    func socketPath(_ name: String) -> String { "\(directory)/\(name).sock" }

    /// Starts serving the volume `name`.
    func serve(_ name: String) throws {
        let volume = try pool.volume(named: name)
        var configuration = NBDServerConfiguration(workersPerConnection: Self.workersPerConnection)
        let allowed = allowedUIDs
        if !allowed.isEmpty {
            configuration.acceptPeer = { socket in
                guard let credentials = socket.peerCredentials() else { return false }
                return allowed.contains(credentials.uid)
            }
        }
        let server = try NBDServer(
            exports: [NBDExport(name: name, description: "Bulkhead volume \(name)", device: volume)],
            defaultExport: name, configuration: configuration, logger: logger)
        let listener = try Listener(binding: .unix(path: socketPath(name)), permissions: 0o660)
        server.start([listener])
        servers.withLock { $0[name] = server }
    }

    /// Stops serving `name`: closes its socket and its connections.
    func stop(_ name: String) {
        guard let server = servers.withLock({ $0.removeValue(forKey: name) }) else { return }
        _ = server.shutdown()
        unlink(socketPath(name))
    }

    func stopAll() {
        for name in served { stop(name) }
    }
}
