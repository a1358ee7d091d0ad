import PoolFormat
import Testing

@Suite struct SpaceMapGeometryTests {
    static let perBitmap = UInt64(PoolLayout.blocksPerBitmapBlock)

    /// Pool sizes in blocks and the expected bitmap blocks and nodes per level.
    static let cases: [(blocks: UInt64, leaves: Int, levels: [Int])] = [
        (64, 1, [1]),
        (16_384, 1, [1]),  // 64 MiB
        (perBitmap, 1, [1]),
        (perBitmap + 1, 2, [1]),
        (64 * perBitmap, 64, [1]),  // 8 GiB
        (64 * perBitmap + 1, 65, [2, 1]),
        (4096 * perBitmap, 4096, [64, 1]),  // 512 GiB
        (4096 * perBitmap + 1, 4097, [65, 2, 1]),
        (1 << 38, 1 << 23, [1 << 17, 1 << 11, 32, 1]),  // 1 PiB
    ]

    @Test func depthForSeveralPoolSizes() {
        for (blocks, leaves, levels) in Self.cases {
            let geometry = SpaceMapGeometry(blockCount: blocks)
            #expect(geometry.blockCount == blocks)
            #expect(geometry.leafCount == leaves, "\(blocks) blocks")
            #expect(geometry.nodesPerLevel == levels, "\(blocks) blocks")
            #expect(geometry.depth == levels.count)
            #expect(geometry.regionSize == UInt64(leaves + levels.reduce(0, +)))
            // Enough bits for every block, and no whole spare bitmap block.
            #expect(UInt64(leaves) * Self.perBitmap >= blocks)
            #expect(UInt64(leaves - 1) * Self.perBitmap < blocks)
        }
    }

    @Test func regionsAreDisjointAndFollowTheFixedArea() {
        for (blocks, _, _) in Self.cases {
            let geometry = SpaceMapGeometry(blockCount: blocks)
            #expect(geometry.regionStart(0) == PoolLayout.spaceMapStart)
            #expect(PoolLayout.spaceMapStart == PoolLayout.superblockSlots.last! + 1)
            #expect(geometry.regionStart(1) == geometry.regionStart(0) + geometry.regionSize)
            #expect(geometry.firstAllocatable == geometry.regionStart(1) + geometry.regionSize)
            #expect(geometry.firstAllocatable == PoolLayout.spaceMapStart + 2 * geometry.regionSize)
            #expect(geometry.region(of: PoolLayout.spaceMapStart - 1) == nil)
            #expect(geometry.region(of: geometry.regionStart(0)) == 0)
            #expect(geometry.region(of: geometry.regionStart(1) - 1) == 0)
            #expect(geometry.region(of: geometry.regionStart(1)) == 1)
            #expect(geometry.region(of: geometry.firstAllocatable - 1) == 1)
            #expect(geometry.region(of: geometry.firstAllocatable) == nil)
            #expect(geometry.region(of: 0) == nil)
        }
    }

    /// Every bitmap block and node of a region has its own block, inside
    /// the region, and together they fill it exactly: leaves first, then the
    /// nodes level by level, the root last.
    @Test func nodePlacementFillsEachRegionExactly() {
        for (blocks, _, _) in Self.cases where blocks <= 4096 * Self.perBitmap + 1 {
            let geometry = SpaceMapGeometry(blockCount: blocks)
            for region in 0..<2 {
                var placed: [PhysicalBlock] = []
                for index in 0..<geometry.leafCount { placed.append(geometry.leaf(index, region: region)) }
                for level in 1...geometry.depth {
                    for index in 0..<geometry.nodesPerLevel[level - 1] {
                        placed.append(geometry.node(level: level, index: index, region: region))
                    }
                }
                let start = geometry.regionStart(region)
                #expect(placed == Array(start..<(start + geometry.regionSize)), "\(blocks) blocks, region \(region)")
                #expect(geometry.node(level: geometry.depth, index: 0, region: region) == start + geometry.regionSize - 1)
                #expect(placed.allSatisfy { geometry.region(of: $0) == region })
            }
        }
    }

    @Test func firstAllocatableForKnownSizes() {
        // 64 MiB pool: one bitmap block and one root per region.
        #expect(SpaceMapGeometry(blockCount: 16_384).firstAllocatable == 40)
        // 8 GiB + 1 block: 65 bitmaps, 2 + 1 nodes per region.
        #expect(SpaceMapGeometry(blockCount: 64 * Self.perBitmap + 1).firstAllocatable == 36 + 2 * 68)
        // The smallest pool still leaves room for data.
        #expect(SpaceMapGeometry(blockCount: PoolLayout.minimumBlocks).firstAllocatable < PoolLayout.minimumBlocks)
    }

    @Test func fixedLayoutConstants() {
        #expect(PoolLayout.headerAreaA == 0)
        #expect(PoolLayout.headerAreaB == PoolLayout.headerAreaA + UInt64(PoolLayout.headerAreaBlocks))
        #expect(PoolLayout.keyslotCount == PoolLayout.headerAreaBlocks - 1)
        #expect(PoolLayout.superblockSlots == [32, 33, 34, 35])
        #expect(PoolLayout.fanOut * PoolLayout.pointerSize == PoolLayout.blockSize)
        #expect(PoolLayout.volumesPerTableBlock * 256 == PoolLayout.blockSize)
        #expect(96 + PoolLayout.logRecordsPerBlock * 80 <= PoolLayout.blockSize)
        #expect(PoolLayout.blocksPerBitmapBlock == 32_768)
    }
}
