import Foundation

/// Remembers, outside the pool, the newest committed generation of each
/// pool, so a storage side that serves an older copy is caught at open
/// (docs/format.md, section 9).
public protocol TrustAnchor: Sendable {
    /// The newest generation recorded for the pool, or nil if none is (a
    /// pool seen for the first time is trusted on first use).
    func generation(pool: [UInt8]) throws(PoolError) -> UInt64?
    /// Records a durable commit. Must be durable itself before returning.
    func record(pool: [UInt8], generation: UInt64) throws(PoolError)
}

/// A trust anchor kept as one small file per pool in the crypt domain's
/// own state directory, replaced atomically on every commit. It detects any
/// rollback of the pool to a state before the last acknowledged flush for
/// as long as the directory survives; nothing if the directory is lost or
/// rolled back along with the pool.
public final class FileTrustAnchor: TrustAnchor {
    public let directory: String

    public init(directory: String) throws(PoolError) {
        self.directory = directory
        do {
            try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true, attributes: [.posixPermissions: 0o700])
        } catch {
            throw .anchor("cannot create state directory \(directory): \(error.localizedDescription)")
        }
    }

    private func path(_ pool: [UInt8]) -> String { "\(directory)/anchor-\(hex(pool))" }

    public func generation(pool: [UInt8]) throws(PoolError) -> UInt64? {
        let file = path(pool)
        guard FileManager.default.fileExists(atPath: file) else { return nil }
        guard let text = try? String(contentsOfFile: file, encoding: .utf8) else { throw .anchor("cannot read \(file)") }
        let fields = text.split(separator: " ").map(String.init)
        guard fields.count == 3, fields[0] == "bulkhead-anchor-v1", fields[1] == hex(pool),
            let value = UInt64(fields[2].trimmingCharacters(in: .whitespacesAndNewlines))
        else { throw .anchor("\(file) is malformed") }
        return value
    }

    public func record(pool: [UInt8], generation: UInt64) throws(PoolError) {
        let file = path(pool)
        let temporary = file + ".new"
        let contents = Array("bulkhead-anchor-v1 \(hex(pool)) \(generation)\n".utf8)
        let fd = open(temporary, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o600)
        guard fd >= 0 else { throw .anchor("cannot write \(temporary): errno \(errno)") }
        let written = contents.withUnsafeBytes { Foundation.write(fd, $0.baseAddress, $0.count) }
        let synced = fsync(fd)
        close(fd)
        guard written == contents.count, synced == 0 else { throw .anchor("cannot write \(temporary): errno \(errno)") }
        guard rename(temporary, file) == 0 else { throw .anchor("cannot replace \(file): errno \(errno)") }
        let directoryFD = open(directory, O_RDONLY | O_DIRECTORY | O_CLOEXEC)
        if directoryFD >= 0 {
            fsync(directoryFD)
            close(directoryFD)
        }
    }
}
