import Foundation

/// Remembers, outside the pool, the newest committed generation of each
/// pool, so a storage side that serves an older copy is caught at open
/// (docs/format.md, section 9). An anchor may instead (or also) count
/// epochs: a counter outside the pool that only moves forward, whose value
/// every superblock records as its anchor epoch.
public protocol TrustAnchor: Sendable {
    /// The newest generation recorded for the pool, or nil if none is (a
    /// pool seen for the first time is trusted on first use).
    func generation(pool: [UInt8]) throws(PoolError) -> UInt64?
    /// Records a durable commit. Must be durable itself before returning.
    func record(pool: [UInt8], generation: UInt64) throws(PoolError)
    /// The epoch counter bound to the pool, or nil if this anchor counts no
    /// epochs. No superblock older than its value is accepted.
    func epoch(pool: [UInt8]) throws(PoolError) -> AnchorEpoch?
    /// Moves the epoch counter forward to `epoch`, the epoch a durable
    /// superblock already carries.
    func advanceEpoch(pool: [UInt8], to epoch: UInt64) throws(PoolError)
}

extension TrustAnchor {
    public func epoch(pool: [UInt8]) throws(PoolError) -> AnchorEpoch? { nil }
    public func advanceEpoch(pool: [UInt8], to epoch: UInt64) throws(PoolError) {}
}

/// An epoch counter's value as read at open.
public struct AnchorEpoch: Sendable, Equatable {
    /// The counter's value: the lowest epoch a pool state may claim.
    public var value: UInt64
    /// The counter was created by this open: the pool is bound to it now
    /// (trust on first use), whatever epoch it claims.
    public var firstUse: Bool
    /// Where the counter lives, for messages ("TPM NV index 0x01501234").
    public var name: String

    public init(value: UInt64, firstUse: Bool, name: String) {
        self.value = value
        self.firstUse = firstUse
        self.name = name
    }
}

/// Several anchors at once (a file anchor and a TPM counter): generations
/// from the first that remembers one, records to all, epochs from the
/// first that counts them.
public struct CombinedTrustAnchor: TrustAnchor {
    public let anchors: [any TrustAnchor]

    public init(_ anchors: [any TrustAnchor]) { self.anchors = anchors }

    public func generation(pool: [UInt8]) throws(PoolError) -> UInt64? {
        var newest: UInt64?
        for anchor in anchors {
            if let found = try anchor.generation(pool: pool) { newest = max(newest ?? 0, found) }
        }
        return newest
    }

    public func record(pool: [UInt8], generation: UInt64) throws(PoolError) {
        for anchor in anchors { try anchor.record(pool: pool, generation: generation) }
    }

    public func epoch(pool: [UInt8]) throws(PoolError) -> AnchorEpoch? {
        for anchor in anchors {
            if let found = try anchor.epoch(pool: pool) { return found }
        }
        return nil
    }

    public func advanceEpoch(pool: [UInt8], to epoch: UInt64) throws(PoolError) {
        for anchor in anchors { try anchor.advanceEpoch(pool: pool, to: epoch) }
    }
}

extension Pool {
    /// The anchor epoch new superblocks carry.
    public var anchorEpoch: UInt64 { state.withLock { $0.anchorEpoch } }

    /// After open: holds the loaded state against the epoch counter. A pool
    /// whose epoch is behind the counter was rolled back to a state before
    /// the counter's last advance, and is refused. A pool ahead of it
    /// crashed between committing a new epoch and counting it: the counter
    /// catches up. On first use the pool takes the counter's value.
    func settleAnchorEpoch() throws(PoolError) {
        guard let anchor, let counter = try anchor.epoch(pool: poolID) else { return }
        let claimed = state.withLock { $0.anchorEpoch }
        if claimed < counter.value {
            guard counter.firstUse else {
                throw .rolledBackEpoch(pool: hex(poolID), found: claimed, counter: counter.value, anchor: counter.name)
            }
            state.withLock { $0.anchorEpoch = counter.value }
            try commitEverything(newSuperblock: true)
        } else if claimed > counter.value {
            try anchor.advanceEpoch(pool: poolID, to: claimed)
        }
    }

    /// Starts the next anchor epoch (at clean close, and at most once per
    /// interval while serving): commits, writing a superblock that carries
    /// epoch e+1 even if nothing was pending, then moves the counter to
    /// e+1. Every state before that superblock is from then on refused as
    /// rolled back. A crash between the two leaves the pool ahead of the
    /// counter, which the next open accepts and counts. Without an epoch
    /// anchor this is a commit.
    public func advanceAnchorEpoch() throws(PoolError) {
        guard let anchor, try anchor.epoch(pool: poolID) != nil else {
            try commitEverything(newSuperblock: false)
            return
        }
        let next = state.withLock { state -> UInt64 in
            state.anchorEpoch += 1
            return state.anchorEpoch
        }
        try commitEverything(newSuperblock: true)
        try anchor.advanceEpoch(pool: poolID, to: next)
    }
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
