import BlockDevice
import Foundation
import Keys
import PoolFormat
import Testing

@testable import CryptPool

/// Small overwrites land beside their logical neighbours
/// (`Volume.placementHint`, `SpaceMap.allocate(_:near:)`), and a read of
/// the permuted neighbourhood they leave costs one staged storage request
/// (`LocatedRead.planRequests`), opened out of the staging buffer.
@Suite struct NeighbourPlacementTests {
    private static let blockSize = Int(PoolLayout.blockSize)

    private static func pointer(_ block: PhysicalBlock) -> BlockPointer {
        BlockPointer(block: block, salt: .zero, counter: NonceCounter(rawValue: 1), generation: 1, tag: .zero)
    }

    /// Plans the reads of logical blocks 0, 1, ... placed at `places`.
    private static func plan(_ places: [PhysicalBlock], into plain: UnsafeMutableRawBufferPointer) -> LocatedRead {
        var located = LocatedRead(first: 0, plain: plain)
        for (logical, place) in places.enumerated() { located.blocks.append((UInt64(logical), pointer(place))) }
        located.planRequests()
        return located
    }

    /// A request as (first block, block count, byte offset in `plain` or
    /// nil when it reads into the staging buffer).
    private static func shape(_ located: LocatedRead) -> [(PhysicalBlock, Int, Int?)] {
        located.requests.map { request in
            let offset = request.buffer.baseAddress! - located.plain.baseAddress!
            let inPlain = offset >= 0 && offset < located.plain.count
            return (request.offset / UInt64(PoolLayout.blockSize), request.buffer.count / blockSize, inPlain ? offset : nil)
        }
    }

    @Test func requestsFollowTheLayout() {
        let plain = UnsafeMutableRawBufferPointer.allocate(byteCount: 8 * Self.blockSize, alignment: 64)
        defer { plain.deallocate() }
        func expectShape(_ places: [PhysicalBlock], _ expected: [(PhysicalBlock, Int, Int?)], _ comment: Comment) {
            let got = Self.shape(Self.plan(places, into: UnsafeMutableRawBufferPointer(rebasing: plain[..<(places.count * Self.blockSize)])))
            #expect(got.map(\.0) == expected.map(\.0) && got.map(\.1) == expected.map(\.1) && got.map(\.2) == expected.map(\.2), comment)
        }
        expectShape([100, 101, 102, 103], [(100, 4, 0)], "in order: one request straight into place")
        expectShape([103, 101, 100, 102], [(100, 4, nil)], "permuted: one staged request")
        expectShape([100, 102, 104, 106], [(100, 7, nil)], "small gaps are read over")
        expectShape([100, 300, 500, 700], [(100, 1, 0), (300, 1, 4096), (500, 1, 8192), (700, 1, 12288)], "far apart: one each")
        expectShape(
            [100, 109, 118], [(100, 1, 0), (109, 1, 4096), (118, 1, 8192)],
            "gaps within spanGap that would read more than spanAmplification times the blocks")
        expectShape(
            [200, 201, 202, 203, 400, 402, 401, 403], [(200, 4, 0), (400, 4, nil)],
            "a run in order goes straight into place beside a staged neighbourhood")
    }

    /// Each block's ciphertext is where its request puts it.
    @Test func stagedBlocksAreFoundInTheirRequest() {
        let plain = UnsafeMutableRawBufferPointer.allocate(byteCount: 8 * Self.blockSize, alignment: 64)
        defer { plain.deallocate() }
        let places: [PhysicalBlock] = [200, 201, 202, 203, 400, 402, 401, 403]
        let located = Self.plan(places, into: plain)
        let staged = located.requests[1]
        for index in 0..<4 {
            #expect(located.ciphertext(ofBlock: index).baseAddress == UnsafeRawPointer(located.region(ofBlock: index).baseAddress))
        }
        for index in 4..<8 {
            let expected = staged.buffer.baseAddress! + Int(places[index] - staged.offset / UInt64(PoolLayout.blockSize)) * Self.blockSize
            #expect(located.ciphertext(ofBlock: index).baseAddress == UnsafeRawPointer(expected))
        }
    }

    /// The places of a leaf's units, read from the cached nodes, match the
    /// checkpointed tree's lookups; nothing is known of a node not cached,
    /// and an unwritten subtree is all zero.
    @Test func cachedLeafPlacesMatchTheTree() throws {
        let rig = try TamperRig(checkpointEveryFlush: true)
        try rig.pool.createVolume(name: "vm", size: 1 << 30)
        try rig.fill("vm", from: 0, count: 130, seed: 4)
        try rig.pool.flush()
        let state = try rig.volumeState("vm")
        #expect(state.overlay.isEmpty && state.depth >= 2)
        let fanOut = UInt64(PoolLayout.fanOut)
        func places(_ index: UInt64) -> [PhysicalBlock]? {
            var places = [PhysicalBlock](repeating: 7, count: PoolLayout.fanOut)
            let found = places.withUnsafeMutableBufferPointer { buffer in
                rig.pool.cachedLeafPlaces(root: state.root, depth: state.depth, index: index, into: buffer)
            }
            return found ? places : nil
        }
        for index: UInt64 in [0, fanOut - 1, fanOut, 129, 130] {
            let first = index / fanOut * fanOut
            // Through the cache, as the engine loads nodes; then without storage reads.
            let expected = try (first..<(first + fanOut)).map { try rig.pointer("vm", $0).block }
            #expect(places(index) == expected, "the leaf of block \(index)")
        }
        #expect(places(1 << 17) == [PhysicalBlock](repeating: 0, count: PoolLayout.fanOut), "an unwritten subtree")
        let leaf = try rig.treeNode("vm", level: 1, above: 5).pointer
        rig.pool.nodeCache.remove(leaf)
        #expect(places(5) == nil, "a node not cached")
    }

    /// The memo of leaf places answers for the checkpoint it was filled in
    /// only, gives no place for an unwritten unit or one outside the leaf,
    /// keeps one leaf per entry, and refuses places too far apart.
    @Test func placementMemoKeepsALeafUntilTheNextCheckpoint() {
        let memo = PlacementMemo()
        #expect(memo.neighbourhood(leaf: 3, at: 0, checkpoint: 0) == nil, "an empty memo")
        let fanOut = PoolLayout.fanOut
        var places = (0..<fanOut).map { PhysicalBlock(1000 + $0) }
        places[10] = 0
        places[20] = 1000 + (1 << 31)
        places.withUnsafeBufferPointer { memo.remember(leaf: 3, checkpoint: 5, places: $0) }
        #expect(memo.neighbourhood(leaf: 3, at: 0, checkpoint: 5).map { [$0.previous, $0.current, $0.next] } == [nil, 1000, 1001])
        #expect(memo.neighbourhood(leaf: 3, at: 11, checkpoint: 5).map { [$0.previous, $0.current, $0.next] } == [nil, 1011, 1012])
        #expect(memo.neighbourhood(leaf: 3, at: 20, checkpoint: 5).map { [$0.previous, $0.current, $0.next] } == [1019, 1000 + (1 << 31), 1021])
        #expect(memo.neighbourhood(leaf: 3, at: fanOut - 1, checkpoint: 5)?.next == .some(nil))
        #expect(memo.neighbourhood(leaf: 3, at: 0, checkpoint: 6) == nil, "kept past a checkpoint")
        #expect(memo.neighbourhood(leaf: 4, at: 0, checkpoint: 5) == nil, "another leaf")

        // The leaf sharing the entry replaces it.
        let other = UInt64(3 + PlacementMemo.capacity)
        places.withUnsafeBufferPointer { memo.remember(leaf: other, checkpoint: 5, places: $0) }
        #expect(memo.neighbourhood(leaf: 3, at: 0, checkpoint: 5) == nil)
        #expect(memo.neighbourhood(leaf: other, at: 1, checkpoint: 5)?.current == 1001)

        // Places 2^32 blocks apart do not fit 32-bit offsets.
        places[30] = 1000 + (1 << 32)
        places.withUnsafeBufferPointer { memo.remember(leaf: 9, checkpoint: 5, places: $0) }
        #expect(memo.neighbourhood(leaf: 9, at: 0, checkpoint: 5) == nil)
    }

    /// A volume's 64 blocks written in one request, another volume's 512
    /// after them, of which the first 32 are trimmed and freed; then four
    /// blocks of the first volume overwritten one at a time, through one
    /// `Volume` as the crypt domain serves it: the first overwrite walks
    /// the tree for its hint, and the leaf's places kept then
    /// (`PlacementMemo`) place the other three.
    private static func rigWithHolesBesideTheVolume() throws -> (rig: TamperRig, start: PhysicalBlock, overwritten: [UInt64]) {
        let rig = try TamperRig(checkpointEveryFlush: true)
        try rig.pool.createVolume(name: "vm", size: 1 << 20)
        try rig.pool.createVolume(name: "other", size: 4 << 20)
        let volume = try rig.pool.volume(named: "vm")
        let blocks = (0..<64).map { randomBytes(Self.blockSize, seed: 500 + UInt64($0)) }
        try write(volume, 0, Array(blocks.joined()))
        for (block, data) in blocks.enumerated() { rig.expected["vm", default: [:]][UInt64(block)] = data }
        let other = try rig.pool.volume(named: "other")
        try write(other, 0, randomBytes(512 * Self.blockSize, seed: 9))
        try other.trim(at: 0, length: UInt64(32 * Self.blockSize), fua: false)
        try rig.pool.flush()

        let start = try rig.pointer("vm", 0).block
        #expect(try rig.pointer("vm", 63).block == start + 63)
        let holes = (start + 64)..<(start + 96)
        try #require(rig.pool.state.withLock { state in holes.allSatisfy { !state.space.isUsed($0) } }, "the trimmed blocks are free")
        let overwritten: [UInt64] = [63, 5, 40, 20]
        for block in overwritten {
            let data = randomBytes(Self.blockSize, seed: 900 + block)
            try write(volume, block * UInt64(Self.blockSize), data)
            rig.expected["vm", default: [:]][block] = data
        }
        let checkpoint = rig.pool.checkpoints.load(ordering: .relaxed)
        #expect(volume.placements.neighbourhood(leaf: 0, at: 5, checkpoint: checkpoint)?.current == start + 5, "the overwrites' leaf was not kept")
        return (rig, start, overwritten)
    }

    @Test func overwritesLandBesideTheirNeighboursAndReadAsOneRequest() throws {
        let (rig, start, overwritten) = try Self.rigWithHolesBesideTheVolume()
        // Next-fit would have put them after the other volume's blocks.
        for block in overwritten {
            let place = try rig.pointer("vm", block).block
            #expect(place >= start + 64 && place < start + 96, "block \(block) went to \(place), not beside its neighbours at \(start)")
        }
        let volume = try rig.pool.volume(named: "vm")
        var bytes = [UInt8](repeating: 0xEE, count: 64 * Self.blockSize)
        let requests = try bytes.withUnsafeMutableBytes { buffer in
            try #require(try volume.locate(0..<64, in: buffer, cachedOnly: false)).requests.count
        }
        #expect(requests == 1)
        try bytes.withUnsafeMutableBytes { buffer in try volume.readChecked(at: 0, into: buffer) }
        let expected = (0..<64).flatMap { rig.expected["vm"]![UInt64($0)]! }
        #expect(bytes == expected, "the staged read returned wrong data")
    }

    /// A staged block that fails to open is reported with the digest of
    /// the ciphertext as read, the same as one opened in place.
    @Test func aTamperedStagedBlockIsReportedExactly() throws {
        let (rig, _, _) = try Self.rigWithHolesBesideTheVolume()
        let target = try rig.pointer("vm", 40)
        rig.flipBit(target.block, byte: 77, bit: 3)
        let volume = try rig.pool.volume(named: "vm")
        var bytes = [UInt8](repeating: 0xEE, count: 64 * Self.blockSize)
        var failure: PoolError?
        bytes.withUnsafeMutableBytes { buffer in
            do throws(PoolError) { try volume.readChecked(at: 0, into: buffer) } catch { failure = error }
        }
        #expect(failure == rig.dataFailure("vm", 40, pointer: target))
        #expect(!contains(bytes, rig.rawBlock(target.block)), "the ciphertext reached the consumer's buffer")
    }
}
