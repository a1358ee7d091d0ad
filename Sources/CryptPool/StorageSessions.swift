import BlockDevice
#if canImport(Glibc)
import Glibc
#endif
import Logging
import PoolFormat
import Synchronization

/// Writes a storage restart may have lost although the flush after them
/// succeeded (docs/format.md, section 7, "Storage restarts").
///
/// A flush proves durable only what the storage instance that answers it
/// acknowledged. `BlockDevice.sessionEpoch` changes when the device starts
/// a new session (the NBD client reconnected, perhaps to a restarted
/// storage domain that lost its volatile cache). Every write samples the
/// epoch before it is sent; a flush answered in the same epoch covers it.
/// Otherwise the blocks are read back and checked before anything names them.
struct UnflushedWrites {
    /// Sealed metadata blocks and where they went.
    var metadata: [(PhysicalBlock, [UInt8])] = []
    /// Sealed metadata blocks no longer held, checked by opening them.
    var sealed: [SealedMetadata] = []
    /// Records whose data blocks were written.
    var records: [LogRecord] = []
    /// The epoch sampled before the oldest of these writes; nil if none.
    var oldestEpoch: UInt64?
}

/// What a read-back after a storage session change found missing.
struct LostWrites {
    var metadata: [PhysicalBlock] = []
    /// Data blocks: volume, logical block, physical block.
    var data: [(VolumeID, UInt64, PhysicalBlock)] = []

    var isEmpty: Bool { metadata.isEmpty && data.isEmpty }

    var description: String {
        var parts: [String] = []
        if !data.isEmpty {
            let shown = data.prefix(8).map { "volume \($0.0) block \($0.1) (physical \($0.2))" }.joined(separator: ", ")
            parts.append("\(data.count) data blocks [\(shown)\(data.count > 8 ? ", ..." : "")]")
        }
        if !metadata.isEmpty {
            parts.append("\(metadata.count) metadata blocks [\(metadata.prefix(8).map(String.init).joined(separator: ", "))]")
        }
        return parts.joined(separator: " and ")
    }
}

extension Pool {
    /// The device's session epoch now, sampled before a write is sent.
    var storageEpoch: UInt64 { storage.sessionEpoch }

    /// After a successful flush: whether `writes` may be missing because the
    /// storage session changed since the oldest of them; if so, reads them
    /// back and returns what is missing (empty when all arrived).
    func lostAfterFlush(_ writes: UnflushedWrites) throws(PoolError) -> LostWrites {
        let now = storageEpoch
        guard let oldest = writes.oldestEpoch, oldest != now else { return LostWrites() }
        storageLogger.warning(
            "storage session changed since writes this flush covers (epoch \(oldest) to \(now)): reading back \(writes.metadata.count + writes.sealed.count) metadata and up to \(writes.records.count) data blocks"
        )
        var lost = LostWrites()
        let metadata = writes.metadata.sorted { $0.0 < $1.0 }
        try readEach(metadata.map(\.0)) { (index, bytes) throws(PoolError) in
            if !bytes.elementsEqual(metadata[index].1) { lost.metadata.append(metadata[index].0) }
        }
        let sealed = writes.sealed.sorted { $0.pointer.block < $1.pointer.block }
        try readEach(sealed.map { $0.pointer.block }) { (index, bytes) throws(PoolError) in
            let block = sealed[index]
            let sealer = state.withLock { metadataSealer(block.pointer.salt, in: &$0) }
            let ad = AssociatedData.metadata(
                pool: poolID, kind: block.kind, object: block.object, level: UInt16(block.level), firstIndex: block.firstIndex,
                salt: block.pointer.salt, counter: block.pointer.counter)
            do {
                _ = try sealer.open(bytes, tag: block.pointer.tag, counter: block.pointer.counter, associatedData: ad)
            } catch {
                lost.metadata.append(block.pointer.block)
            }
        }
        // Only the newest pointer of each logical block: an older one that
        // was overwritten before this flush is named by no state.
        var seen = Set<VolumeBlock>()
        var data: [(VolumeID, UInt64, BlockPointer)] = []
        for record in writes.records.reversed() {
            guard case .map(let volume, let block, let pointer) = record, !pointer.isNull else { continue }
            guard seen.insert(VolumeBlock(volume: volume, block: block.rawValue)).inserted else { continue }
            data.append((volume, block.rawValue, pointer))
        }
        data.sort { $0.2.block < $1.2.block }
        try readEach(data.map(\.2.block)) { (index, bytes) throws(PoolError) in
            let (volume, block, pointer) = data[index]
            guard let sealer = state.withLock({ try? dataSealer(volume, pointer.salt, in: &$0) }) else { return }
            let ad = AssociatedData.data(
                pool: poolID, volume: volume, block: LogicalBlock(block), salt: pointer.salt, counter: pointer.counter)
            do {
                _ = try sealer.open(bytes, tag: pointer.tag, counter: pointer.counter, associatedData: ad)
            } catch {
                lost.data.append((volume, block, pointer.block))
            }
        }
        if lost.isEmpty {
            storageLogger.notice("every block written before the storage session changed is there; the flush stands")
        }
        return lost
    }

    /// Flushes the storage and checks that `writes` survived any session
    /// change; metadata that did not is reported as a failed storage write
    /// (the caller writes it again), data blocks fail the pool.
    func flushStorage(covering writes: UnflushedWrites) throws(PoolError) {
        try flushStorage()
        try checkFlushed(writes)
    }

    /// After `writes` were made durable (a flush that covered them, or FUA
    /// writes) and storage reported success: fails as
    /// `flushStorage(covering:)` does if a storage restart lost any.
    func checkFlushed(_ writes: UnflushedWrites) throws(PoolError) {
        let lost = try lostAfterFlush(writes)
        if !lost.data.isEmpty {
            let error = PoolError.writesLost(lost.description)
            fail(error)
            throw error
        }
        if !lost.metadata.isEmpty {
            let message = "storage restart lost \(lost.description) written before it; written again at the next commit"
            storageLogger.error("\(message)")
            throw .storage(.io(operation: message, errno: EIO))
        }
    }

    /// Stops the pool for good: every request and commit fails with `error`
    /// until the pool is opened again from the storage.
    func fail(_ error: PoolError) {
        let first = failure.withLock { failure -> Bool in
            guard failure == nil else { return false }
            failure = error
            return true
        }
        failed.store(true, ordering: .releasing)
        if first {
            storageLogger.critical(
                "\(error); the pool refuses every request until it is opened again, so that no commit names lost blocks")
        }
    }

    /// Whether the pool stopped serving (see `fail`).
    var hasFailed: Bool { failed.load(ordering: .acquiring) }

    /// Throws the error that failed the pool, if it has.
    func checkUsable() throws(PoolError) {
        // The flag keeps the lock off every request's path.
        guard hasFailed, let failure = failure.withLock({ $0 }) else { return }
        throw failure
    }
}

struct VolumeBlock: Hashable {
    var volume: VolumeID
    var block: UInt64
}

let storageLogger = Logger(label: "bulkhead.pool")
