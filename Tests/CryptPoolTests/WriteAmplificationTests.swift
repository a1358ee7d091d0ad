import BlockDevice
import Foundation
import Keys
import PoolFormat
import Synchronization
import Testing

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

    /// N random 4 KiB writes with a FLUSH every 1000 and a clean close cost
    /// the data, the log and one superblock per FLUSH: nothing else. The
    /// reopened pool replays the log and reads back every block.
    @Test func randomWritesWithFlushesCostTheDataAndTheLog() throws {
        let device = try CountingDevice(size: 64 << 20)
        let configuration = PoolConfiguration(commitInterval: 0)
        let pool = try Pool.format(storage: device, passphrase: passphrase, cost: testCost, anchor: nil, configuration: configuration).pool
        try pool.createVolume(name: "v", size: Self.volumeSize)
        let volume = try pool.volume(named: "v")
        let writes = 3000
        let perFlush = 1000
        let start = device.writtenBytes
        var random = SplitMix(seed: 7)
        var expected: [UInt64: UInt64] = [:]
        for index in 0..<writes {
            let logical = random.next() % (Self.volumeSize / Self.blockSize)
            try write(volume, logical * Self.blockSize, randomBytes(4096, seed: UInt64(index)))
            expected[logical] = UInt64(index)
            if (index + 1) % perFlush == 0 { try volume.flush() }
        }
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
        let configuration = PoolConfiguration(checkpointRecords: records, commitInterval: 0)
        let pool = try Pool.format(storage: device, passphrase: passphrase, cost: testCost, anchor: nil, configuration: configuration).pool
        try pool.createVolume(name: "v", size: Self.volumeSize)
        let volume = try pool.volume(named: "v")
        var random = SplitMix(seed: 8)
        for index in 0..<(records - 1) {
            try write(volume, (random.next() % (Self.volumeSize / Self.blockSize)) * Self.blockSize, randomBytes(4096, seed: UInt64(index)))
        }
        try volume.flush()
        try write(volume, 0, randomBytes(4096, seed: 99))
        let generation = pool.generation
        let start = device.writtenBytes
        try volume.flush()  // the 2000th record: a commit, then a checkpoint
        #expect(pool.generation == generation + 2, "a commit and a checkpoint")
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
        let pool = try Pool.format(storage: device, passphrase: passphrase, cost: testCost, anchor: anchor, configuration: configuration).pool
        try pool.createVolume(name: "v", size: 1 << 20)
        try write(try pool.volume(named: "v"), 0, randomBytes(4096, seed: 1))
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
final class CountingDevice: BlockDevice {
    let inner: MemoryBlockDevice
    private let written = Atomic<UInt64>(0)

    init(size: UInt64) throws {
        inner = try MemoryBlockDevice(size: size)
    }

    var writtenBytes: UInt64 { written.load(ordering: .acquiring) }
    var size: UInt64 { inner.size }
    var isReadOnly: Bool { false }
    var capabilities: BlockDeviceCapabilities { inner.capabilities }
    var minimumBlockSize: UInt32 { inner.minimumBlockSize }

    func read(at offset: UInt64, into buffer: UnsafeMutableRawBufferPointer) throws(BlockDeviceError) {
        try inner.read(at: offset, into: buffer)
    }

    func write(at offset: UInt64, from buffer: UnsafeRawBufferPointer, fua: Bool) throws(BlockDeviceError) {
        try inner.write(at: offset, from: buffer, fua: fua)
        written.add(UInt64(buffer.count), ordering: .acq_rel)
    }

    func flush() throws(BlockDeviceError) { try inner.flush() }

    func trim(at offset: UInt64, length: UInt64, fua: Bool) throws(BlockDeviceError) {
        try inner.trim(at: offset, length: length, fua: fua)
    }

    func writeZeroes(at offset: UInt64, length: UInt64, flags: ZeroFlags) throws(BlockDeviceError) {
        try inner.writeZeroes(at: offset, length: length, flags: flags)
        written.add(length, ordering: .acq_rel)
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
