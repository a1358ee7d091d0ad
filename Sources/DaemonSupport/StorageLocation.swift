import BlockDevice
import NBDClient
import Sockets

/// Where a pool lives: an export of a storage domain over NBD
/// (`nbd:unix:/run/bulkhead/storage.sock` or `nbd:unix:PATH#EXPORT`), or an
/// image file or block device opened directly for offline work.
public enum StorageLocation: Sendable, CustomStringConvertible {
    case nbd(SocketAddress, export: String)
    case file(String)

    public init(parsing text: String) throws(SocketError) {
        if text.hasPrefix("nbd:") {
            let rest = String(text.dropFirst(4))
            let parts = rest.split(separator: "#", maxSplits: 1).map(String.init)
            self = .nbd(try SocketAddress(parsing: parts[0]), export: parts.count > 1 ? parts[1] : "")
        } else {
            self = .file(text)
        }
    }

    public var description: String {
        switch self {
        case .nbd(let address, let export): "nbd:\(address)" + (export.isEmpty ? "" : "#\(export)")
        case .file(let path): path
        }
    }

    /// Opens the location as a block device.
    public func open(retryWindow: Double = 30) throws -> any BlockDevice {
        switch self {
        case .nbd(let address, let export):
            return try RemoteBlockDevice(
                connectingTo: address, export: export, options: RemoteBlockDevice.Options(retryWindow: retryWindow))
        case .file(let path):
            return try FileBlockDevice(path: path)
        }
    }
}
