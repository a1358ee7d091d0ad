import BlockDevice
import PoolFormat
import Testing

@testable import CryptPool

/// The tree node cache keeps what is in use (CLOCK), and a checkpoint drops
/// the nodes it replaces instead of letting them take room.
@Suite struct NodeCacheTests {
    private func pointer(_ block: UInt64) -> BlockPointer {
        BlockPointer(block: block, salt: .zero, counter: NonceCounter(rawValue: block), generation: 1, tag: .zero)
    }

    private func node(_ marker: UInt64) -> TreeNode {
        var node = TreeNode()
        node.children[0] = pointer(marker)
        return node
    }

    /// A working set used between misses survives a stream of nodes loaded
    /// once: random eviction would lose about half of it.
    @Test func usedNodesSurviveAScan() {
        let cache = NodeCache(capacity: 64)
        for block in 0..<32 as Range<UInt64> { cache.put(pointer(block), node(block)) }
        for round in 0..<20 as Range<UInt64> {
            let kept = (0..<32 as Range<UInt64>).filter { cache.get(pointer($0))?.children[0] == pointer($0) }
            #expect(kept.count == 32, "round \(round): kept \(kept)")
            for block in 0..<16 as Range<UInt64> {
                let once = 1000 + round * 16 + block
                cache.put(pointer(once), node(once))
            }
        }
        #expect(cache.count == 64)
    }

    @Test func removeFreesTheSlotAndKeepsTheOthers() {
        let cache = NodeCache(capacity: 16)
        for block in 0..<16 as Range<UInt64> { cache.put(pointer(block), node(block)) }
        cache.remove(pointer(3))
        cache.remove(pointer(15))
        cache.remove(pointer(99))
        #expect(cache.count == 14)
        #expect(cache.get(pointer(3)) == nil)
        #expect(cache.get(pointer(15)) == nil)
        let kept = (0..<16 as Range<UInt64>).filter { cache.get(pointer($0))?.children[0] == pointer($0) }
        #expect(kept == (0..<16).filter { $0 != 3 && $0 != 15 })
        // Room again without evicting anything.
        cache.put(pointer(20), node(20))
        cache.put(pointer(21), node(21))
        #expect(cache.count == 16)
        for block in (0..<16 as Range<UInt64>) where block != 3 && block != 15 {
            #expect(cache.get(pointer(block)) != nil, "block \(block)")
        }
        // Full: the next put evicts exactly one.
        cache.put(pointer(22), node(22))
        #expect(cache.count == 16)
        #expect(cache.get(pointer(22))?.children[0] == pointer(22))
    }

    /// After checkpoints rewrite a tree, the cache holds the new nodes, not
    /// the replaced ones, and reads stay correct.
    @Test func checkpointDropsReplacedNodes() throws {
        // 32,768 blocks, depth 3: a root, 8 level-2 nodes for the data below.
        let (_, pool, volume) = try poolWithVolume(configuration: PoolConfiguration(checkpointRecords: 1))
        let spaceMapNodes = pool.nodeCache.count
        let logicals: [UInt64] = [0, 64, 4096, 8192, 12_288, 16_384, 20_480, 24_576, 28_672]
        for pass in 0..<5 {
            for logical in logicals { try write(volume, logical * 4096, randomBytes(4096, seed: UInt64(pass) * 100 + logical)) }
            // checkpointRecords 1: every flush checkpoints, rewriting every node on the paths.
            try volume.flush()
        }
        // Root + 8 level-2 nodes + 9 leaves, plus the space map's nodes.
        #expect(pool.nodeCache.count <= 18 + spaceMapNodes + 2, "cache holds \(pool.nodeCache.count) nodes")
        for logical in logicals {
            var back = [UInt8](repeating: 0, count: 4096)
            try back.withUnsafeMutableBytes { try volume.read(at: logical * 4096, into: $0) }
            #expect(back == randomBytes(4096, seed: 400 + logical))
        }
        try pool.close()
    }
}
