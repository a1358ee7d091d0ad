import BlockDevice
import Foundation
import Keys
import PoolFormat
import Synchronization
import Testing
import TestSupport

@testable import CryptPool

/// What the pool writes to storage per block the consumer writes, against
/// the arithmetic of docs/format.md, section 11: a commit of `k` records
/// writes ceil(k / 50) log blocks and one superblock besides the data; a
/// checkpoint writes only the tree nodes the records dirtied (at most
/// min(records, nodes) per level), the space map blocks that changed, the
/// volume table, the pool object and a superblock.
///
/// Found by bench/wa.sh (bench/chain/results/issue7-full.md, table C: 1.276
/// for 4 KiB random writes with a FLUSH every 1000): the clean close folded
/// a log of 16,000 records into a 1 GiB volume's tree, rewriting about
/// 4,000 leaves, a quarter of the data again.
@Suite struct WriteAmplificationTests {
    static let blockSize = UInt64(PoolLayout.blockSize)
    /// A thin 1 GiB volume (4,096 leaves) on a much smaller pool: random
    /// writes then dirty about one leaf each, as on a large volume.
    static let volumeSize: UInt64 = 1 << 30

    /// A pool formatted on `device` with one thin volume "v" of `size` bytes.
    static func poolWithVolume(
        on device: any BlockDevice, size: UInt64 = volumeSize, anchor: (any TrustAnchor)? = nil, configuration: PoolConfiguration
    ) throws -> (pool: Pool, volume: Volume) {
        let pool = try Pool.format(storage: device, passphrase: passphrase, cost: testCost, anchor: anchor, configuration: configuration).pool
        try pool.createVolume(name: "v", size: size)
        return (pool, try pool.volume(named: "v"))
    }

    /// Writes `count` 4 KiB blocks, the one numbered `index` holding
    /// `randomBytes(4096, seed: index)`, each to a block of the volume drawn
    /// from `SeededGenerator(seed: placement)`, with a FLUSH after every
    /// `flushEvery`; returns the seed each written block holds now.
    @discardableResult
    static func writeRandomBlocks(to volume: Volume, count: Int, placement: UInt64, flushEvery: Int = .max) throws -> [UInt64: UInt64] {
        var random = SeededGenerator(seed: placement)
        var holds: [UInt64: UInt64] = [:]
        for index in 0..<count {
            let logical = random.next() % (volumeSize / blockSize)
            try write(volume, logical * blockSize, randomBytes(4096, seed: UInt64(index)))
            holds[logical] = UInt64(index)
            if (index + 1) % flushEvery == 0 { try volume.flush() }
        }
        return holds
    }

    /// N random 4 KiB writes with a FLUSH every 1000 and a clean close cost
    /// the data, the log and one superblock per FLUSH: nothing else. The
    /// reopened pool replays the log and reads back every block.
    @Test func randomWritesWithFlushesCostTheDataAndTheLog() throws {
        let device = try CountingDevice(size: 64 << 20)
        let configuration = PoolConfiguration(commitInterval: 0)
        let (pool, volume) = try Self.poolWithVolume(on: device, configuration: configuration)
        let writes = 3000
        let perFlush = 1000
        let start = device.writtenBytes
        let expected = try Self.writeRandomBlocks(to: volume, count: writes, placement: 7, flushEvery: perFlush)
        try pool.close()
        let written = (device.writtenBytes - start) / Self.blockSize
        let flushes = writes / perFlush
        let logBlocksPerFlush = (perFlush + PoolLayout.logRecordsPerBlock - 1) / PoolLayout.logRecordsPerBlock
        let bound = UInt64(writes + flushes * (logBlocksPerFlush + 1))
        #expect(written <= bound, "wrote \(written) blocks for \(writes) data blocks, the format's bound is \(bound)")
        #expect(written >= UInt64(writes), "the data blocks themselves: \(written) blocks written")

        let reopened = try Pool.open(storage: device, secret: .passphrase(passphrase), anchor: nil, configuration: configuration)
        #expect(reopened.summary().logRecords == UInt64(writes), "the log the close left is replayed")
        let again = try reopened.volume(named: "v")
        var wrong = 0
        for (logical, seed) in expected {
            if try read(again, logical * Self.blockSize, 4096) != randomBytes(4096, seed: seed) { wrong += 1 }
        }
        #expect(wrong == 0, "\(wrong) of \(expected.count) blocks read back wrong after the reopen")
        try reopened.close()
    }

    /// A checkpoint at the log bound writes no more than the nodes the
    /// records dirtied plus the fixed structures; its cost is spread over
    /// the records it folds in.
    @Test func checkpointWritesOnlyDirtiedNodes() throws {
        let device = try CountingDevice(size: 64 << 20)
        let records = 2000
        let (pool, volume) = try Self.poolWithVolume(
            on: device, configuration: PoolConfiguration(checkpointRecords: records, commitInterval: 0))
        try Self.writeRandomBlocks(to: volume, count: records - 1, placement: 8)
        try volume.flush()
        try write(volume, 0, randomBytes(4096, seed: 99))
        let generation = pool.generation
        let start = device.writtenBytes
        try volume.flush()  // the 2000th record: a checkpoint, which takes it without logging it first
        #expect(pool.generation == generation + 1, "a checkpoint alone")
        #expect(pool.summary().logRecords == 0)
        let written = (device.writtenBytes - start) / Self.blockSize

        // The commit: one record, one log block, one superblock, no data.
        var bound = 2
        // The checkpoint: per level of the 1 GiB tree (4,096 leaves, 64
        // nodes, a root), at most one node per record.
        for nodes in [4096, 64, 1] { bound += min(records, nodes) }
        // The space map region: every bitmap block and node, at most.
        let geometry = SpaceMapGeometry(blockCount: pool.blockCount)
        bound += geometry.leafCount + geometry.nodesPerLevel.reduce(0, +)
        // Volume table, pool object, superblock.
        bound += 3
        #expect(written <= UInt64(bound), "the checkpoint wrote \(written) blocks, the format's bound is \(bound)")
        #expect(written > UInt64(records / 2), "the dirtied leaves are written: \(written) blocks")
    }

    /// A clean close with nothing pending writes nothing; advancing the
    /// anchor epoch with nothing pending writes one superblock, which
    /// carries the new epoch through a reopen.
    @Test func closeAndEpochAdvanceWriteOnlyWhatTheyMust() throws {
        let device = try CountingDevice(size: 16 << 20)
        let anchor = EpochCounter()
        let configuration = PoolConfiguration(commitInterval: 0)
        let (pool, volume) = try WriteAmplificationTests.poolWithVolume(on: device, size: 1 << 20, anchor: anchor, configuration: configuration)
        try write(volume, 0, randomBytes(4096, seed: 1))
        try pool.flush()

        var start = device.writtenBytes
        try pool.close()
        #expect(device.writtenBytes == start, "a close with nothing pending wrote \(device.writtenBytes - start) bytes")

        let reopened = try Pool.open(storage: device, secret: .passphrase(passphrase), anchor: anchor, configuration: configuration)
        let epoch = reopened.anchorEpoch
        start = device.writtenBytes
        try reopened.advanceAnchorEpoch()
        #expect(device.writtenBytes - start == Self.blockSize, "one superblock, got \(device.writtenBytes - start) bytes")
        #expect(reopened.anchorEpoch == epoch + 1)
        #expect(anchor.counter == epoch + 1)

        let third = try Pool.open(storage: device, secret: .passphrase(passphrase), anchor: anchor, configuration: configuration)
        #expect(third.anchorEpoch == epoch + 1, "the epoch the superblock carries")
        #expect(try read(third.volume(named: "v"), 0, 4096) == randomBytes(4096, seed: 1))
        try third.close()
    }
}

/// A memory device that counts the bytes written to it.
final class CountingDevice: ForwardingBlockDevice {
    let inner: MemoryBlockDevice
    private let written = Atomic<UInt64>(0)

    init(size: UInt64) throws {
        inner = try MemoryBlockDevice(size: size)
    }

    var writtenBytes: UInt64 { written.load(ordering: .acquiring) }

    func write(at offset: UInt64, from buffer: UnsafeRawBufferPointer, fua: Bool) throws(BlockDeviceError) {
        try inner.write(at: offset, from: buffer, fua: fua)
        written.add(UInt64(buffer.count), ordering: .acquiringAndReleasing)
    }

    func writeZeroes(at offset: UInt64, length: UInt64, flags: ZeroFlags) throws(BlockDeviceError) {
        try inner.writeZeroes(at: offset, length: length, flags: flags)
        written.add(length, ordering: .acquiringAndReleasing)
    }
}

/// An anchor that counts epochs only (as a TPM NV counter does).
final class EpochCounter: TrustAnchor {
    private let value = Mutex<UInt64?>(nil)

    var counter: UInt64? { value.withLock { $0 } }

    func generation(pool: [UInt8]) throws(PoolError) -> UInt64? { nil }
    func record(pool: [UInt8], generation: UInt64) throws(PoolError) {}

    func epoch(pool: [UInt8]) throws(PoolError) -> AnchorEpoch? {
        value.withLock { value in
            let firstUse = value == nil
            if firstUse { value = 0 }
            return AnchorEpoch(value: value!, firstUse: firstUse, name: "test counter")
        }
    }

    func advanceEpoch(pool: [UInt8], to epoch: UInt64) throws(PoolError) {
        value.withLock { $0 = max($0 ?? 0, epoch) }
    }
}

/// The checkpoint sends its blocks before its flush and keeps only their
/// pointers; a storage restart before that flush is caught by opening each
/// block read back (docs/format.md, section 7, "Storage restarts").
@Suite struct CheckpointReadBackTests {
    /// A pool on a write-back device whose checkpoint (over 1,024 blocks, so
    /// sent in more than one batch) meets a storage restart at its flush.
    static func checkpointMeetingRestart(losingCache: Bool) throws -> (pool: Pool, device: RestartingDevice, flushed: Result<Void, any Error>) {
        let device = try RestartingDevice(size: 64 << 20)
        let records = 1200
        let (pool, volume) = try WriteAmplificationTests.poolWithVolume(
            on: device, configuration: PoolConfiguration(checkpointRecords: records, commitInterval: 0))
        for index in 0..<records {
            try write(volume, UInt64(index) * 64 * 4096, randomBytes(4096, seed: UInt64(index)))
            if index == records - 2 { try volume.flush() }
        }
        // The last record reaches the bound: the FLUSH checkpoints without
        // a commit first, and the checkpoint's flush is the first.
        device.restart(atFlush: 1, losingCache: losingCache)
        let flushed = Result { try volume.flush() }
        return (pool, device, flushed)
    }

    static func readsBack(_ pool: Pool, _ records: Int = 1200) throws -> Int {
        let volume = try pool.volume(named: "v")
        var correct = 0
        for index in 0..<records {
            if try read(volume, UInt64(index) * 64 * 4096, 4096) == randomBytes(4096, seed: UInt64(index)) { correct += 1 }
        }
        return correct
    }

    @Test func lostCheckpointBlocksFailTheCheckpoint() throws {
        let (pool, device, flushed) = try Self.checkpointMeetingRestart(losingCache: true)
        #expect((try? flushed.get()) == nil, "the checkpoint's blocks were lost; it must not be committed")
        #expect(pool.summary().logRecords == 1200, "the log still holds the records flushed before; the last one is pending again")
        let reopened = try Pool.open(storage: device, secret: .passphrase(passphrase), anchor: nil)
        #expect(reopened.verify().failures.isEmpty, "an honest restart must not leave integrity errors")
        // Every write flushed before reads back. The last one, whose FLUSH
        // failed, was never logged: its data went with the storage cache
        // the restart lost.
        #expect(try Self.readsBack(reopened, 1199) == 1199)
        // The running pool finds at the next FLUSH that storage lost a
        // write it had acknowledged, and stops; a reopen goes on from the
        // last commit, as above.
        #expect(throws: PoolError.self) { try pool.flush() }
    }

    @Test func keptCheckpointBlocksAreReadBackAndCommitted() throws {
        let (pool, device, flushed) = try Self.checkpointMeetingRestart(losingCache: false)
        #expect((try? flushed.get()) != nil, "nothing was lost: \(flushed)")
        #expect(pool.summary().logRecords == 0, "the checkpoint is committed")
        #expect(device.blocksReadAfterRestart > 1024, "every checkpoint block is read back, \(device.blocksReadAfterRestart) were")
        let reopened = try Pool.open(storage: device, secret: .passphrase(passphrase), anchor: nil)
        #expect(reopened.verify().failures.isEmpty)
        #expect(try Self.readsBack(reopened) == 1200)
    }
}

/// A memory device with an honest write-back cache that can restart (a new
/// session epoch) at a chosen flush, keeping or losing what it cached.
final class RestartingDevice: ForwardingBlockDevice {
    private struct State {
        var cache: [(offset: UInt64, bytes: [UInt8])] = []
        var epoch: UInt64 = 0
        var restartAt: (flushes: Int, losing: Bool)?
        var readAfterRestart: UInt64 = 0
        var restarted = false
    }

    let inner: MemoryBlockDevice
    private let state = Mutex(State())

    init(size: UInt64) throws {
        inner = try MemoryBlockDevice(size: size)
    }

    var sessionEpoch: UInt64 { state.withLock { $0.epoch } }
    var blocksReadAfterRestart: UInt64 { state.withLock { $0.readAfterRestart } }

    /// Restarts at the `flushes`-th flush from now, before serving it.
    func restart(atFlush flushes: Int, losingCache: Bool) {
        state.withLock { $0.restartAt = (flushes, losingCache) }
    }

    func read(at offset: UInt64, into buffer: UnsafeMutableRawBufferPointer) throws(BlockDeviceError) {
        try state.withLock { state throws(BlockDeviceError) in
            try inner.read(at: offset, into: buffer)
            for entry in state.cache {
                let start = max(entry.offset, offset)
                let end = min(entry.offset + UInt64(entry.bytes.count), offset + UInt64(buffer.count))
                guard start < end else { continue }
                for index in start..<end { buffer[Int(index - offset)] = entry.bytes[Int(index - entry.offset)] }
            }
            if state.restarted { state.readAfterRestart += UInt64(buffer.count / 4096) }
        }
    }

    func write(at offset: UInt64, from buffer: UnsafeRawBufferPointer, fua: Bool) throws(BlockDeviceError) {
        try checkRange(offset, UInt64(buffer.count))
        let bytes = Array(buffer)
        if fua {
            try state.withLock { _ throws(BlockDeviceError) in try inner.write(at: offset, from: buffer, fua: true) }
        } else {
            state.withLock { $0.cache.append((offset, bytes)) }
        }
    }

    func flush() throws(BlockDeviceError) {
        try state.withLock { state throws(BlockDeviceError) in
            if let restart = state.restartAt {
                if restart.flushes <= 1 {
                    if restart.losing { state.cache = [] }
                    state.epoch += 1
                    state.restartAt = nil
                    state.restarted = true
                } else {
                    state.restartAt = (restart.flushes - 1, restart.losing)
                }
            }
            for entry in state.cache {
                var failure: BlockDeviceError?
                entry.bytes.withUnsafeBytes { bytes in
                    do throws(BlockDeviceError) { try inner.write(at: entry.offset, from: bytes, fua: false) } catch { failure = error }
                }
                if let failure { throw failure }
            }
            state.cache = []
        }
    }

    func trim(at offset: UInt64, length: UInt64, fua: Bool) throws(BlockDeviceError) {
        try flush()
        try inner.trim(at: offset, length: length, fua: fua)
    }

    func writeZeroes(at offset: UInt64, length: UInt64, flags: ZeroFlags) throws(BlockDeviceError) {
        try flush()
        try inner.writeZeroes(at: offset, length: length, flags: flags)
    }
}
