import PoolFormat
import TestSupport
import Testing

@testable import CryptPool

/// The allocator scans a word at a time; it must hand out exactly the
/// blocks a block-by-block next-fit scan would.
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

    @Test func allocatesLikeANextFitScan() {
        // A count that is not a multiple of 64, so the last word is partial.
        let blockCount: UInt64 = 20_000 + 37
        var map = SpaceMap(blockCount: blockCount)
        let first = map.firstAllocatable
        var used = Set(0..<first)
        var cursor = first
        var generator = SeededGenerator(seed: 5)
        for round in 0..<400 {
            let count = Int(generator.next() % 300) + 1
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
}
