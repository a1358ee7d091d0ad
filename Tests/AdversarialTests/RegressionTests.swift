import BlockDevice
import PoolFormat
import Testing

@testable import CryptPool

/// One test per bug the adversarial harnesses found, named after the bug.
@Suite(.serialized) struct RegressionTests {
    /// A checkpoint whose storage writes fail has already recorded the
    /// space map blocks it sealed as the region's contents
    /// (`writeSpaceMap` updates `state.regions` before the writes are
    /// sent). The next checkpoint into that region skips every bitmap
    /// block whose contents did not change since, so the superblock ends
    /// up naming bitmap blocks that never reached the storage: the pool
    /// works until it is closed, then cannot be opened again. Needs a pool
    /// with more than one bitmap block (over 128 MiB), so that one of them
    /// is left unchanged between the two checkpoints.
    @Test func failedCheckpointLeavesSpaceMapPointersToUnwrittenBlocks() throws {
        let memory = try MemoryBlockDevice(size: 160 << 20)
        let device = HostileDevice(over: memory)
        let pool = try Pool.format(storage: device, passphrase: testPassphrase, cost: testCost, anchor: nil).pool
        #expect(SpaceMapGeometry(blockCount: pool.blockCount).leafCount > 1)

        // The first checkpoint into the second region fails at its first write...
        device.misbehaviour = .failRequests(probability: 1)
        #expect(throws: PoolError.self) { try pool.createVolume(name: "vm", size: 1 << 20) }
        // ...and the retry succeeds.
        device.misbehaviour = .honest
        try pool.createVolume(name: "vm", size: 1 << 20)
        let volume = try pool.volume(named: "vm")
        try volume.writeBytes(at: 0, blockContents(seed: 1))
        // A commit, not a checkpoint: the superblock keeps naming the retried checkpoint.
        try volume.flush()

        // With the anchor at the last commit: the bug made this an integrity
        // failure on the space map bitmap block the failed attempt sealed.
        let anchor = MemoryTrustAnchor(generation: pool.generation)
        let reopened = Result { try Pool.open(storage: device, secret: .passphrase(testPassphrase), anchor: anchor) }
        #expect(reopened.isSuccess, "honest storage after one failed write: the pool must reopen, got \(reopened)")
        if case .success(let again) = reopened {
            #expect(again.generation == pool.generation)
            #expect(again.verify().failures.isEmpty)
            let intact = try again.volume(named: "vm").readBytes(at: 0, count: blockSize) == blockContents(seed: 1)
            #expect(intact)
        }
        // Without an anchor the bug was worse: recovery fell back to the
        // format's superblock and the volume silently disappeared.
        let unanchored = try Pool.open(storage: device, secret: .passphrase(testPassphrase), anchor: nil)
        #expect(unanchored.generation == pool.generation)
        #expect(unanchored.volumes.map(\.name) == ["vm"])
    }

    /// A checkpoint that fails keeps the blocks it allocated for tree
    /// nodes, the volume table and the pool object marked in use; the next
    /// checkpoint writes them into the space map, so they are lost for good.
    @Test func failedCheckpointLeaksItsAllocations() throws {
        func freeAfterCreate(failFirst: Bool) throws -> (live: UInt64, reopened: UInt64) {
            let device = HostileDevice(over: try MemoryBlockDevice(size: 16 << 20))
            let pool = try Pool.format(storage: device, passphrase: testPassphrase, cost: testCost, anchor: nil).pool
            try pool.createVolume(name: "a", size: 1 << 20)
            let volume = try pool.volume(named: "a")
            for block in UInt64(0)..<64 { try volume.writeBytes(at: block * 4096, blockContents(seed: block + 1)) }
            try volume.flush()
            if failFirst {
                device.misbehaviour = .failRequests(probability: 1)
                #expect(throws: PoolError.self) { try pool.createVolume(name: "b", size: 1 << 20) }
                device.misbehaviour = .honest
            }
            try pool.createVolume(name: "b", size: 1 << 20)
            try pool.close()
            let reopened = try Pool.open(storage: device, secret: .passphrase(testPassphrase), anchor: nil)
            return (pool.freeBlocks, reopened.freeBlocks)
        }
        let clean = try freeAfterCreate(failFirst: false)
        let retried = try freeAfterCreate(failFirst: true)
        #expect(retried.live == clean.live, "blocks leaked in memory by the failed checkpoint")
        #expect(retried.reopened == clean.reopened, "blocks leaked on disk by the failed checkpoint")
    }

    /// The superblock slots, as a block range.
    static let superblockBlocks = PoolLayout.superblockSlots[0]..<(PoolLayout.superblockSlots.last! + 1)

    /// A 16 MiB pool on storage that is honest until told otherwise, with
    /// a volume "vm" whose first block (seed 1) is written and flushed.
    static func poolWithOneFlushedBlock(anchor: MemoryTrustAnchor) throws -> (HostileDevice, Pool, Volume) {
        let device = HostileDevice(over: try MemoryBlockDevice(size: 16 << 20))
        let pool = try Pool.format(storage: device, passphrase: testPassphrase, cost: testCost, anchor: anchor).pool
        try pool.createVolume(name: "vm", size: 1 << 20)
        let volume = try pool.volume(named: "vm")
        try volume.writeBytes(at: 0, blockContents(seed: 1))
        try volume.flush()
        return (device, pool, volume)
    }

    /// A commit moves the pool's state forward before its superblock is
    /// written. If that write fails, the consumer's FLUSH fails; but the
    /// retried FLUSH finds nothing new to commit and succeeds without
    /// writing any superblock. The writes it acknowledged are durable in
    /// log blocks no durable superblock names, the anchor never moved, and
    /// a restart silently opens the older state: acknowledged writes lost.
    @Test func retriedFlushAfterFailedSuperblockWriteSucceedsWithoutOne() throws {
        let anchor = MemoryTrustAnchor()
        let (device, pool, volume) = try Self.poolWithOneFlushedBlock(anchor: anchor)

        try volume.writeBytes(at: 0, blockContents(seed: 2))
        device.failNext(.write, blocks: Self.superblockBlocks)
        #expect(throws: BlockDeviceError.self) { try volume.flush() }
        try volume.flush()

        // The crypt domain restarts; the storage is honest and kept everything.
        let reopened = try Pool.open(storage: device, secret: .passphrase(testPassphrase), anchor: anchor)
        let bytes = try reopened.volume(named: "vm").readBytes(at: 0, count: blockSize)
        let survived = bytes == blockContents(seed: 2)
        #expect(survived, "the write a successful FLUSH covered must survive a restart")
        #expect(reopened.generation == pool.generation)
    }

    /// A checkpoint moves the pool's state (and its current space map
    /// region) forward before its superblock is written. If that write
    /// fails, the durable superblock still names the other region, and
    /// the next checkpoint overwrites exactly that region: until its own
    /// superblock is durable, the only durable superblock names a space
    /// map that is no longer there, and the pool cannot be opened.
    @Test func checkpointAfterFailedSuperblockWriteOverwritesTheLiveRegion() throws {
        let anchor = MemoryTrustAnchor()
        let (device, pool, volume) = try Self.poolWithOneFlushedBlock(anchor: anchor)

        // A checkpoint whose superblock write fails...
        try volume.writeBytes(at: 4096, blockContents(seed: 2))
        device.failNext(.write, blocks: Self.superblockBlocks)
        #expect(throws: PoolError.self) { try pool.exclusiveCommit { _, _ in } }
        // ...then another one, which writes its space map region and fails
        // at its superblock too (or the machine stops there).
        try volume.writeBytes(at: 8192, blockContents(seed: 3))
        device.failNext(.write, blocks: Self.superblockBlocks)
        device.failNext(.write, blocks: Self.superblockBlocks)
        #expect(throws: PoolError.self) { try pool.exclusiveCommit { _, _ in } }

        let reopened = Result { try Pool.open(storage: device, secret: .passphrase(testPassphrase), anchor: anchor) }
        #expect(reopened.isSuccess, "honest storage that failed two writes: the pool must open, got \(reopened)")
        if case .success(let again) = reopened {
            #expect(again.verify().failures.isEmpty)
            let intact = try again.volume(named: "vm").readBytes(at: 0, count: blockSize) == blockContents(seed: 1)
            #expect(intact)
        }
    }

    /// Found by the VM boot test (Tests/VMTests): with one bit flipped in
    /// the newest volume table, open passed over the newest superblock
    /// (its checkpoint did not verify) and loaded an older one; with no
    /// anchor (a crypt domain whose state is on tmpfs at boot) it served
    /// the volume as it was before the file system was written, with no
    /// error. Only a torn (HMAC-failing) superblock may be passed over.
    @Test func corruptNewestCheckpointFallsBackToAnOlderSuperblock() throws {
        let memory = try MemoryBlockDevice(size: 16 << 20)
        let pool = try Pool.format(storage: memory, passphrase: testPassphrase, cost: testCost, anchor: nil).pool
        try pool.createVolume(name: "root", size: 1 << 20)
        try pool.volume(named: "root").writeBytes(at: 0, blockContents(seed: 7))
        try pool.close()
        let table = try #require(pool.state.withLock { $0.volumeTable.first })
        var bytes = try memory.readBytes(at: table.block * UInt64(blockSize), count: blockSize)
        bytes[100] ^= 0x04
        try memory.writeBytes(at: table.block * UInt64(blockSize), bytes)

        let reopened = Result { try Pool.open(storage: memory, secret: .passphrase(testPassphrase), anchor: nil) }
        switch reopened {
        case .success(let older):
            Issue.record("opened generation \(older.generation) (newest \(pool.generation)) with volumes \(older.volumes.map(\.name))")
        case .failure(let error):
            guard case PoolError.integrity = error else {
                Issue.record("expected an integrity failure naming the volume table, got \(error)")
                return
            }
        }
    }

    /// Found by fuzz-pool-format: a volume table record whose name is not
    /// UTF-8 decoded with replacement characters, so encoding the decoded
    /// block gave other bytes (a longer name, cut at 64 bytes) and a
    /// checkpoint would have renamed the volume. Names are validated when
    /// volumes are created, so only a bug or a forged table could carry one;
    /// the decoder now refuses them.
    @Test func volumeTableNameThatIsNotUTF8ChangesInARoundTrip() {
        var block = [UInt8](repeating: 0, count: blockSize)
        block[0] = 1  // volume id 1
        block[9] = 0x10  // size 4096 << 8 = 1 MiB
        block[18] = 40  // name length: 40 bytes that are not UTF-8
        for index in 24..<64 { block[index] = 0xAE }
        let decoded = Result { try VolumeTableBlock(decoding: block) }
        if case .success(let table) = decoded {
            let again = try? VolumeTableBlock(decoding: table.encoded())
            #expect(again == table, "a decoded table must encode to the same table")
        }
        #expect(!decoded.isSuccess, "a name that is not UTF-8 must not decode")
    }

    /// An honest storage domain with a volatile write cache crashes after
    /// acknowledging data writes and before the crypt domain's flush; it
    /// comes back at once. The NBD client reconnects and sends the FLUSH to
    /// the new instance, which succeeds: it covers nothing that was lost
    /// (NBDClient/RemoteBlockDevice.swift says callers must detect this).
    /// The pool did not: the commit wrote a superblock naming the lost
    /// blocks and the consumer's FLUSH succeeded. Reads of those blocks then
    /// failed their integrity check, in this session and after a restart: an
    /// honest crash produced integrity errors and lost acknowledged, flushed
    /// writes (design notes, invariant 2). Now the commit sees the storage
    /// session changed, reads the blocks back, finds them missing, fails the
    /// FLUSH and stops the pool; the durable state is the last commit.
    @Test func storageRestartLosingCachedWritesBeforeFlushGoesUnnoticed() throws {
        let setup = try HostileSetup(seed: 40)
        setup.storage.device.misbehaviour = .writeBackCache
        for block in UInt64(0)..<16 { try setup.consumer.write(block, seed: 40_000 + block) }
        try setup.storage.restart(losingCache: true)
        let flushed = Result { () throws(BlockDeviceError) in try setup.consumer.flush() }
        let reads = setup.consumer.checkAll(setup.blocksToRead)
        #expect(reads.wrong == 0)
        #expect(!flushed.isSuccess, "the FLUSH must report the writes the storage lost, then \(reads)")
        // The pool stopped: nothing more is served or committed.
        #expect(throws: BlockDeviceError.self) { try setup.consumer.write(20, seed: 40_100) }
        #expect(throws: PoolError.self) { try setup.pool.close() }

        // Reopened, it is the state of the last successful FLUSH, intact.
        let reopened = setup.reopen()
        #expect(reopened.succeeded, "the pool must open after an honest restart: \(reopened)")
        if case .success(let pool) = reopened {
            #expect(pool.verify().failures.isEmpty, "an honest crash must not leave integrity errors")
            let again = try setup.consumer(of: pool).checkAll(setup.blocksToRead, .afterReopen)
            #expect(again.wrong == 0 && again.failed == 0, "after the reopen: \(again)")
        }
    }

    /// The same restart with the storage keeping its cache (a storage domain
    /// killed with its file intact): the read-back finds every block and
    /// the FLUSH succeeds, in this session and after a reopen.
    @Test func storageRestartKeepingCachedWritesBeforeFlushIsVerified() throws {
        let setup = try HostileSetup(seed: 41)
        setup.storage.device.misbehaviour = .writeBackCache
        for block in UInt64(0)..<16 { try setup.consumer.write(block, seed: 41_000 + block) }
        try setup.storage.restart(losingCache: false)
        let epoch = setup.remote.sessionEpoch
        let flushed = Result { () throws(BlockDeviceError) in try setup.consumer.flush() }
        #expect(flushed.isSuccess, "nothing was lost, the FLUSH must succeed: \(flushed)")
        #expect(setup.remote.sessionEpoch > epoch, "the FLUSH went to a new storage session")
        let reads = setup.consumer.checkAll(setup.blocksToRead)
        #expect(reads.correct == setup.blocksToRead.count, "\(reads)")
        try setup.pool.close()
        let reopened = setup.reopen()
        #expect(reopened.succeeded, "the pool must reopen: \(reopened)")
        if case .success(let pool) = reopened {
            #expect(pool.verify().failures.isEmpty)
            let again = try setup.consumer(of: pool).checkAll(setup.blocksToRead, .afterReopen)
            #expect(again.correct == setup.blocksToRead.count, "after the reopen: \(again)")
        }
    }
}
