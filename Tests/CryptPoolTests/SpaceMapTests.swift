import PoolFormat
import TestSupport
import Testing

@testable import CryptPool

/// The allocator scans a word at a time. Requests below
/// `SpaceMap.extentBlocks` must get exactly the blocks a block-by-block
/// next-fit scan would; larger ones free extents while any are left.
@Suite struct SpaceMapTests {
    /// The block-by-block next-fit reference: free blocks from `cursor` on, wrapping.
    private func reference(_ used: Set<UInt64>, from cursor: UInt64, first: UInt64, count: Int, blockCount: UInt64) -> [UInt64] {
        var result: [UInt64] = []
        var block = cursor
        var scanned: UInt64 = 0
        while result.count < count, scanned < blockCount {
            if block >= blockCount { block = first }
            if !used.contains(block) { result.append(block) }
            block += 1
            scanned += 1
        }
        return result
    }

    @Test func smallRequestsAllocateLikeANextFitScan() {
        // A count that is not a multiple of 64, so the last word is partial.
        let blockCount: UInt64 = 20_000 + 37
        var map = SpaceMap(blockCount: blockCount)
        let first = map.firstAllocatable
        var used = Set(0..<first)
        var cursor = first
        var generator = SeededGenerator(seed: 5)
        for round in 0..<400 {
            let count = Int(generator.next() % UInt64(SpaceMap.extentBlocks - 1)) + 1
            let expected = reference(used, from: cursor, first: first, count: count, blockCount: blockCount)
            let got = map.allocate(count)
            guard UInt64(count) <= blockCount - UInt64(used.count) else {
                #expect(got == nil)
                continue
            }
            #expect(got == expected, "round \(round)")
            for block in got ?? [] { used.insert(block) }
            cursor = (got?.last ?? cursor) + 1
            #expect(map.freeCount == blockCount - UInt64(used.count))
            // Free a scattered few, as overwrites do.
            for _ in 0..<Int(generator.next() % 200) {
                let block = first + generator.next() % (blockCount - first)
                if used.contains(block) {
                    map.release(block)
                    used.remove(block)
                }
            }
        }
        #expect(used.allSatisfy { $0 < blockCount })
    }

    @Test func refusesMoreThanIsFreeAndFillsExactly() {
        let blockCount: UInt64 = 5_000 + 3
        var map = SpaceMap(blockCount: blockCount)
        let free = Int(map.freeCount)
        #expect(map.allocate(free + 1) == nil)
        let all = map.allocate(free)
        #expect(all?.count == free)
        #expect(Set(all ?? []).count == free)
        #expect((all ?? []).allSatisfy { $0 >= map.firstAllocatable && $0 < blockCount })
        #expect(map.freeCount == 0)
        #expect(map.allocate(1) == nil)
        map.release(blockCount - 1)
        #expect(map.allocate(1) == [blockCount - 1])
    }

    /// Overwrites leave single-block holes behind; a large request passes
    /// them by for free extents, even one that starts near a word's end,
    /// and small requests still fill the holes.
    @Test func largeRequestsTakeFreeExtents() {
        let blockCount: UInt64 = 64 * 64
        var map = SpaceMap(blockCount: blockCount)
        let first = map.firstAllocatable
        // A full pool; then every other block of the first half freed (the
        // next-fit cursor, wrapped to the start, sits among these holes) and
        // one extent freed that starts 8 blocks before a word's end.
        _ = map.allocate(Int(map.freeCount))!
        let holes = Set(stride(from: first + first % 2, to: 2_000, by: 2))
        for block in holes { map.release(block) }
        let extent = UInt64(3_064)..<3_400
        for block in extent { map.release(block) }

        let large = map.allocate(256)!
        #expect(large == Array(extent.prefix(256)), "a 1 MiB request in \(runs(large).count) runs")

        let small = map.allocate(3)!
        #expect(small.allSatisfy { holes.contains($0) }, "small requests fill holes: \(small)")
    }

    /// A small request with a hint takes the first free blocks at or after
    /// it within `hintSearchWords` words, then the nearest before it; with
    /// none that near, or a hint outside the pool, it is next-fit as
    /// without one. A large request ignores the hint (free extents).
    @Test func hintedRequestsTakeTheFreeBlocksNearest() {
        let blockCount: UInt64 = 64 * 64
        let window = UInt64(SpaceMap.hintSearchWords * 64)
        var map = SpaceMap(blockCount: blockCount)
        _ = map.allocate(Int(map.freeCount))!
        // Holes around block 2,000, one far away at 3,500, and the next-fit
        // cursor (wrapped to the start) finds the hole at 1,000 first.
        for block: UInt64 in [1_000, 1_990, 1_995, 2_003, 2_010, 3_500] { map.release(block) }

        #expect(map.allocate(1, near: 2_000) == [2_003], "the first free block at or after the hint")
        #expect(map.allocate(2, near: 2_000) == [2_010, 1_995], "then before it, nearest first")
        #expect(map.allocate(1, near: 2_000) == [1_990])
        #expect(map.allocate(1, near: 3_500 - window - 64) == [1_000], "nothing within the window: next-fit")
        #expect(map.allocate(1, near: 3_500 - window + 1) == [3_500], "the last word the window reaches")
        map.release(700)
        #expect(map.allocate(1, near: 0) == [700], "a hint among the fixed structures is ignored")
        map.release(700)
        #expect(map.allocate(1, near: blockCount) == [700], "so is one past the pool")
        #expect(map.freeCount == 0)

        // A large request goes to a free extent, away from the hint.
        for block in UInt64(3_000)..<3_040 { map.release(block) }
        for block: UInt64 in [1_001, 1_002] { map.release(block) }
        #expect(map.allocate(16, near: 1_001) == Array(3_000..<3_016))
        #expect(map.allocate(2, near: 1_001) == [1_001, 1_002])
    }

    /// With no extent left anywhere, a large request still gets exactly the
    /// free blocks it asks for.
    @Test func largeRequestsFallBackToScatteredBlocks() {
        let blockCount: UInt64 = 64 * 40 + 5
        var map = SpaceMap(blockCount: blockCount)
        let all = map.allocate(Int(map.freeCount))!
        for block in all where block % 3 == 0 { map.release(block) }
        let free = map.freeCount
        let got = map.allocate(100)!
        #expect(got.count == 100 && Set(got).count == 100)
        #expect(got.allSatisfy { $0 % 3 == 0 && $0 < blockCount })
        #expect(map.freeCount == free - 100)
        #expect(map.allocate(Int(free - 100) + 1) == nil)
        #expect(map.allocate(Int(free - 100))?.count == Int(free - 100))
    }

    /// Mixed request sizes and frees: every block handed out was free, none
    /// twice, and the free count stays in step.
    @Test func mixedRequestsKeepTheMapConsistent() {
        let blockCount: UInt64 = 20_000 + 37
        var map = SpaceMap(blockCount: blockCount)
        var used = Set(0..<map.firstAllocatable)
        var generator = SeededGenerator(seed: 9)
        for round in 0..<400 {
            let count = Int(generator.next() % 300) + 1
            guard let got = map.allocate(count) else {
                #expect(UInt64(count) > blockCount - UInt64(used.count), "round \(round)")
                continue
            }
            #expect(got.count == count && Set(got).count == count, "round \(round)")
            #expect(got.allSatisfy { $0 < blockCount && !used.contains($0) }, "round \(round)")
            used.formUnion(got)
            #expect(map.freeCount == blockCount - UInt64(used.count))
            for _ in 0..<Int(generator.next() % 400) {
                let block = map.firstAllocatable + generator.next() % (blockCount - map.firstAllocatable)
                if used.contains(block) {
                    map.release(block)
                    used.remove(block)
                }
            }
        }
    }

    /// The persisted bitmap blocks hold, bit by bit, the blocks in use and
    /// not excluded, zero past the end of a pool whose size is no multiple
    /// of a word or of a bitmap block; and reading them back rebuilds that
    /// map.
    @Test func persistedImageMatchesABitByBitReference() {
        let blockCount = UInt64(PoolLayout.blocksPerBitmapBlock) * 2 + 1_000 + 37
        var space = SpaceMap(blockCount: blockCount)
        var generator = SeededGenerator(seed: 11)
        for _ in 0..<400 { _ = space.allocate(Int(generator.next() % 200) + 1) }
        let used = (0..<blockCount).filter { space.isUsed($0) }
        let excluded = used.filter { $0 >= space.firstAllocatable && generator.next() % 3 == 0 } + [used[used.count / 2], blockCount + 5]
        let excludedSet = Set(excluded)
        var image = space.persistedImage()
        image.mark(excluded, inUse: false)
        let bitmapCount = space.bitmapBlockCount
        #expect(bitmapCount == 3)
        var blocks: [[UInt8]] = []
        for index in 0..<bitmapCount {
            let bytes = image.bitmapBlock(index)
            #expect(bytes.count == PoolLayout.blockSize)
            for bit in 0..<PoolLayout.blocksPerBitmapBlock {
                let block = UInt64(index * PoolLayout.blocksPerBitmapBlock + bit)
                let expected = block < blockCount && space.isUsed(block) && !excludedSet.contains(block)
                let stored = bytes[bit / 8] & (1 << (bit % 8)) != 0
                guard stored == expected else {
                    Issue.record("block \(block): stored \(stored), expected \(expected)")
                    return
                }
            }
            blocks.append(bytes)
        }
        let reread = SpaceMap(blockCount: blockCount, bitmapBlocks: blocks)
        #expect((0..<blockCount).allSatisfy { reread.isUsed($0) == (space.isUsed($0) && !excludedSet.contains($0)) || $0 < space.firstAllocatable })
    }

    private func runs(_ blocks: [UInt64]) -> [(start: Int, count: Int)] { contiguousRuns(blocks) }
}
