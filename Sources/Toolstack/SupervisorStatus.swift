#if canImport(Glibc)
import Glibc
#endif
import Foundation
import LaunchMeasurement

/// What the supervisor publishes in RUNTIME/status.json after every change
/// and `bulkhead status` shows (docs/toolstack.md, "Status").
public struct SupervisorStatus: Codable, Sendable, Equatable {
    public struct Domain: Codable, Sendable, Equatable {
        public var role: DomainRole
        /// running, restarting, stopped, or failed (not restarted).
        public var state: String
        /// The domain's pid (outside its PID namespace) while it runs.
        public var pid: Int32?
        public var uid: UInt32
        /// Wall-clock start of the current run, seconds since 1970.
        public var startedAt: Double?
        /// Seconds since `startedAt`, filled in when shown.
        public var uptimeSeconds: Double?
        public var restarts: Int
        /// How the last run ended, e.g. "killed by signal 9 (SIGKILL)".
        public var lastExit: String?
    }

    public struct Export: Codable, Sendable, Equatable {
        public var volume: String
        public var socket: String
        public var consumers: [UInt32]
    }

    public struct Root: Codable, Sendable, Equatable {
        public var export: String
        public var mountPoint: String
        public var device: String
    }

    public var supervisorPid: Int32
    public var manifest: String
    /// starting, running, stopping, stopped.
    public var state: String
    public var startedAt: Double
    public var domains: [Domain]
    public var exports: [Export]
    public var root: Root?

    static let encoder: JSONEncoder = {
        let encoder = JSONEncoder()
        encoder.keyEncodingStrategy = .convertToSnakeCase
        encoder.outputFormatting = [.prettyPrinted, .sortedKeys, .withoutEscapingSlashes]
        return encoder
    }()

    public func json() -> String {
        String(decoding: (try? Self.encoder.encode(self)) ?? Data(), as: UTF8.self)
    }

    /// Writes the status to `path` atomically (a new file renamed over it).
    func write(to path: String) {
        let temporary = path + ".new"
        guard FileManager.default.createFile(atPath: temporary, contents: Data((json() + "\n").utf8)) else { return }
        rename(temporary, path)
    }

    /// The status at `path`, with uptimes filled in.
    public static func read(from path: String) throws(ToolstackError) -> SupervisorStatus {
        guard let data = FileManager.default.contents(atPath: path) else {
            throw ToolstackError("no supervisor status at \(path): is bulkhead boot running?")
        }
        let decoder = JSONDecoder()
        decoder.keyDecodingStrategy = .convertFromSnakeCase
        guard var status = try? decoder.decode(SupervisorStatus.self, from: data) else {
            throw ToolstackError("\(path) is not a supervisor status")
        }
        let now = Date().timeIntervalSince1970
        for index in status.domains.indices {
            status.domains[index].uptimeSeconds = status.domains[index].startedAt.map { max(0, now - $0) }
        }
        if status.state != "stopped", kill(status.supervisorPid, 0) != 0, errno == ESRCH {
            status.state = "dead (the supervisor is gone)"
        }
        return status
    }
}
