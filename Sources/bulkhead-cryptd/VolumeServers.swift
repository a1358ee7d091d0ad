import CryptPool
import Foundation
import Logging
import NBDServer
import Sockets
import Synchronization

/// The NBD servers of the served volumes, one socket each
/// (SERVE_DIR/NAME.sock), started and stopped as volumes come and go.
final class VolumeServers: Sendable {
    let pool: Pool
    let directory: String
    let workersPerConnection: Int
    let access: VolumeAccess
    let logger: Logger
    private let servers = Mutex<[String: NBDServer]>([:])

    init(pool: Pool, directory: String, workersPerConnection: Int, access: VolumeAccess, logger: Logger) {
        self.pool = pool
        self.directory = directory
        self.workersPerConnection = workersPerConnection
        self.access = access
        self.logger = logger
    }

    var served: Set<String> { servers.withLock { Set($0.keys) } }

    func socketPath(_ name: String) -> String { "\(directory)/\(name).sock" }

    /// Starts serving the volume `name`.
    func serve(_ name: String) throws {
        let volume = try pool.volume(named: name)
        // A volume sends neither holes nor block status, so structured
        // replies would only cost its consumers receive calls per READ
        // (NBDServerConfiguration.offersStructuredReplies).
        var configuration = NBDServerConfiguration(
            workersPerConnection: workersPerConnection, offersStructuredReplies: false)
        let allowed = access.uids(for: name)
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
