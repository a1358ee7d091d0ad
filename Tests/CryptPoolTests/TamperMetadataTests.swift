import BlockDevice
import Foundation
import Keys
import PoolFormat
import Testing

@testable import CryptPool

/// Metadata blocks edited on the raw device: volume tree nodes (reads
/// under them fail), log blocks and checkpoint structures (open fails with
/// the integrity failure, with or without a trust anchor).
@Suite struct TamperMetadataTests {
    // MARK: Volume tree nodes

    /// vm1 is 16 MiB: 4096 blocks, a tree of depth 2 (root at level 2,
    /// 64 level-1 nodes of 64 data pointers each).
    static func checkpointedRig() throws -> TamperRig {
        let rig = try TamperRig(checkpointEveryFlush: true)
        try rig.pool.createVolume(name: "vm1", size: 16 << 20)
        try rig.pool.createVolume(name: "vm2", size: 8 << 20)
        try rig.fill("vm1", from: 0, count: 10, seed: 1)
        try rig.fill("vm1", from: 64, count: 10, seed: 2)
        try rig.fill("vm1", from: 4000, count: 10, seed: 3)
        try rig.fill("vm2", from: 0, count: 10, seed: 4)
        try rig.pool.flush()
        _ = try rig.reopen()
        #expect(try rig.volumeState("vm1").depth == 2)
        #expect(try rig.volumeState("vm1").overlay.isEmpty)
        return rig
    }

    @Test func bitFlipInALevel1TreeNode() throws {
        let rig = try Self.checkpointedRig()
        let (node, first) = try rig.treeNode("vm1", level: 1, above: 70)
        #expect(first == 64)
        rig.flipBit(node.block, byte: 64 * 6 + 41)  // inside the tag of child 6

        _ = try rig.reopen()
        let failure = rig.metadataFailure(.volumeTreeNode, volume: "vm1", index: 64, level: 1, pointer: node)
        let failed = rig.checkNoWrongData()
        // Exactly the blocks under that node fail; the rest read as written.
        #expect(failed == ["vm1": Dictionary(uniqueKeysWithValues: (64..<74).map { (UInt64($0), failure) })])
        // An unwritten block under the damaged node is not passed off as zeroes.
        #expect(rig.readBlock("vm1", 100) == .failed(failure))
        // An unwritten block under an intact node still reads as zeroes.
        #expect(rig.readBlock("vm1", 300) == .data([UInt8](repeating: 0, count: 4096)))
    }

    @Test func bitFlipInTheRootNode() throws {
        let rig = try Self.checkpointedRig()
        let root = try rig.volumeState("vm1").root
        rig.flipBit(root.block, byte: 3000, bit: 7)

        _ = try rig.reopen()
        let failure = rig.metadataFailure(.volumeTreeNode, volume: "vm1", index: 0, level: 2, pointer: root)
        let failed = rig.checkNoWrongData()
        #expect(failed["vm1"]?.count == 30)
        #expect(failed["vm1"]?.values.allSatisfy { $0 == failure } == true)
        #expect(failed["vm2"] == nil)
        #expect(rig.readBlock("vm1", 2000) == .failed(failure))
    }

    /// A tree node replaced by its own older version (from the checkpoint
    /// before): the parent holds the new node's tag, so the old one fails.
    @Test func treeNodeReplacedByItsOlderVersion() throws {
        let rig = try Self.checkpointedRig()
        let (oldNode, _) = try rig.treeNode("vm1", level: 1, above: 70)
        let oldCiphertext = rig.rawBlock(oldNode.block)
        try rig.put("vm1", 70, [UInt8](repeating: 0x70, count: 4096))
        try rig.pool.flush()
        let (newNode, first) = try rig.treeNode("vm1", level: 1, above: 70)
        #expect(newNode.block != oldNode.block)
        rig.setRawBlock(newNode.block, oldCiphertext)

        _ = try rig.reopen()
        let failure = rig.metadataFailure(.volumeTreeNode, volume: "vm1", index: first, level: 1, pointer: newNode)
        #expect(rig.checkNoWrongData() == ["vm1": Dictionary(uniqueKeysWithValues: Set(Array(64..<74) + [70]).map { (UInt64($0), failure) })])
    }

    /// After a reopen, the leaves a checkpoint rewrites are not cached and
    /// are read together, one batch for their parent (`Pool.prefetchNodes`):
    /// a damaged one among them fails the checkpoint with the failure that
    /// names it, as reading it alone did, and the data under both stays.
    @Test func damagedLeafAmongThoseACheckpointReadsTogether() throws {
        let rig = try Self.checkpointedRig()
        let (leaf, first) = try rig.treeNode("vm1", level: 1, above: 70)
        rig.flipBit(leaf.block, byte: 64 * 6 + 41)

        _ = try rig.reopen()
        try rig.put("vm1", 5, [UInt8](repeating: 0x05, count: 4096))
        try rig.put("vm1", 70, [UInt8](repeating: 0x70, count: 4096))
        let failure = rig.metadataFailure(.volumeTreeNode, volume: "vm1", index: first, level: 1, pointer: leaf)
        #expect(throws: failure) { try rig.pool.flush() }
        // The writes are committed in the log; the checkpoint never switched.
        #expect(rig.readBlock("vm1", 5) == .data([UInt8](repeating: 0x05, count: 4096)))
        #expect(rig.readBlock("vm1", 70) == .data([UInt8](repeating: 0x70, count: 4096)))
        #expect(rig.readBlock("vm1", 64) == .failed(failure))
    }

    // MARK: Log blocks

    /// TamperRig.fourGenerations and its two log blocks, oldest first.
    static func loggedRig(useAnchor: Bool) throws -> (TamperRig, [PhysicalBlock]) {
        let rig = try TamperRig.fourGenerations(useAnchor: useAnchor)
        let logBlocks = rig.pool.state.withLock { $0.logBlocks }
        #expect(logBlocks.count == 2)
        return (rig, logBlocks)
    }

    /// The pointer to log block `sequence`: the superblock's head, or the
    /// `previous` of the block after it.
    func logPointer(_ pool: Pool, sequence: UInt64) throws -> BlockPointer {
        var pointer = pool.state.withLock { $0.logHead }
        var current = pool.state.withLock { UInt64($0.logBlocks.count) } - 1
        while current > sequence {
            let plain = try pool.openMetadata(pointer, kind: .log, object: 0, level: 0, firstIndex: current)
            pointer = try LogBlock(decoding: plain).previous
            current -= 1
        }
        return pointer
    }

    @Test(arguments: [0, 1])
    func bitFlipInALogBlockWithAnchor(sequence: Int) throws {
        let (rig, logBlocks) = try Self.loggedRig(useAnchor: true)
        let pointer = try logPointer(rig.pool, sequence: UInt64(sequence))
        #expect(pointer.block == logBlocks[sequence])
        rig.flipBit(pointer.block, byte: 777)
        // Generation 4's log does not verify, and the anchor forbids going back to 3.
        #expect(rig.openError() == rig.metadataFailure(.log, index: UInt64(sequence), level: 0, pointer: pointer))
    }

    /// Without an anchor the newest superblock still decides: its log does
    /// not verify, so open fails with that failure rather than loading the
    /// older commit (a storage side must not roll the pool back by
    /// corrupting one block; docs/format.md, section 6).
    @Test(arguments: [0, 1])
    func bitFlipInALogBlockWithoutAnchor(sequence: Int) throws {
        let (rig, logBlocks) = try Self.loggedRig(useAnchor: false)
        let pointer = try logPointer(rig.pool, sequence: UInt64(sequence))
        #expect(pointer.block == logBlocks[sequence])
        rig.flipBit(pointer.block, byte: 100)
        #expect(rig.openError(anchor: false) == rig.metadataFailure(.log, index: UInt64(sequence), level: 0, pointer: pointer))
    }

    // MARK: Checkpoint structures

    /// Generations: 1 format, 2 create vm1, 3 the checkpoint that folds the
    /// data's record into the tree (checkpointRecords 1: the FLUSH that
    /// reaches the bound checkpoints without logging the record first).
    static func checkpointRig(useAnchor: Bool) throws -> TamperRig {
        let rig = try TamperRig(useAnchor: useAnchor, checkpointEveryFlush: true)
        try rig.pool.createVolume(name: "vm1", size: 16 << 20)
        try rig.fill("vm1", from: 0, count: 8, seed: 1)
        try rig.pool.flush()
        #expect(rig.pool.generation == 3)
        return rig
    }

    enum Structure: String, CaseIterable, Sendable {
        case poolObject, volumeTable, spaceMapBitmap, spaceMapRoot
    }

    /// The newest checkpoint's block of `structure` and the failure the engine must report for it.
    func target(_ structure: Structure, _ rig: TamperRig) -> (PhysicalBlock, (TamperRig) -> PoolError) {
        let pool = rig.pool
        let (object, table, region, image) = pool.state.withLock {
            ($0.poolObject, $0.volumeTable, $0.spaceMapRegion, $0.regions[$0.spaceMapRegion])
        }
        switch structure {
        case .poolObject:
            return (object.block, { $0.metadataFailure(.poolObject, index: 0, level: 0, pointer: object) })
        case .volumeTable:
            return (table[0].block, { $0.metadataFailure(.volumeTable, index: 0, level: 0, pointer: table[0]) })
        case .spaceMapBitmap:
            let leaf = image.leafPointers[0]!
            #expect(leaf.block == pool.geometry.leaf(0, region: region))
            return (leaf.block, { $0.metadataFailure(.spaceMapBitmap, index: 0, level: 0, pointer: leaf) })
        case .spaceMapRoot:
            let root = image.nodePointers[pool.geometry.depth - 1][0]!
            #expect(root.block == pool.geometry.node(level: pool.geometry.depth, index: 0, region: region))
            return (root.block, { $0.metadataFailure(.spaceMapNode, index: 0, level: pool.geometry.depth, pointer: root) })
        }
    }

    @Test(arguments: Structure.allCases)
    func bitFlipInACheckpointStructureWithAnchor(structure: Structure) throws {
        let rig = try Self.checkpointRig(useAnchor: true)
        let (block, failure) = target(structure, rig)
        rig.flipBit(block, byte: 2049, bit: 3)
        #expect(rig.openError() == failure(rig))
    }

    /// Without an anchor, open does not fall back past the damaged
    /// checkpoint to generation 2 (whose structures are still intact): only
    /// a torn superblock may be passed over.
    @Test(arguments: Structure.allCases)
    func bitFlipInACheckpointStructureWithoutAnchor(structure: Structure) throws {
        let rig = try Self.checkpointRig(useAnchor: false)
        let (block, failure) = target(structure, rig)
        rig.flipBit(block, byte: 2049, bit: 3)
        #expect(rig.openError(anchor: false) == failure(rig))
    }
}
