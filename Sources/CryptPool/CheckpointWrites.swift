import PoolFormat

/// A metadata block already sent to storage and no longer held in memory:
/// after a storage session change it is checked by reading it back and
/// opening it with its pointer's tag (docs/format.md, section 7).
struct SealedMetadata {
    var pointer: BlockPointer
    var kind: MetadataKind
    var object: UInt32
    var level: Int
    var firstIndex: UInt64
}

/// The metadata blocks a checkpoint writes, sent to storage in batches as
/// they are sealed. A checkpoint after random writes on a large volume
/// rewrites one leaf per record; holding all of them until the end took
/// 4 KiB per record (256 MiB at 65,536 records). Blocks written early are
/// harmless: they are free in every durable state until the checkpoint's
/// superblock names them, after its flush.
struct CheckpointWrites {
    /// Blocks sealed but not yet sent; at most `batchBlocks`.
    private(set) var pending: [(PhysicalBlock, [UInt8])] = []
    /// Every block added, for the check after the flush.
    private(set) var checks: [SealedMetadata] = []
    /// The storage session epoch before the first write.
    let epoch: UInt64

    /// Blocks sealed before they are sent (4 MiB).
    static let batchBlocks = 1024

    init(epoch: UInt64) {
        self.epoch = epoch
        pending.reserveCapacity(Self.batchBlocks)
    }

    /// Adds a sealed block; sends the batch through `pool` once it is full.
    mutating func add(
        _ sealed: (ciphertext: [UInt8], pointer: BlockPointer), kind: MetadataKind, object: UInt32, level: Int, firstIndex: UInt64,
        pool: Pool
    ) throws(PoolError) {
        pending.append((sealed.pointer.block, sealed.ciphertext))
        checks.append(SealedMetadata(pointer: sealed.pointer, kind: kind, object: object, level: level, firstIndex: firstIndex))
        if pending.count >= Self.batchBlocks { try send(through: pool) }
    }

    /// Sends the blocks not yet sent.
    mutating func send(through pool: Pool) throws(PoolError) {
        try pool.writeScattered(pending)
        pending.removeAll(keepingCapacity: true)
    }
}
