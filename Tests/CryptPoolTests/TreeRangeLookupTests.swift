import BlockDevice
import PoolFormat
import Testing

@testable import CryptPool

/// A range lookup in a checkpointed tree gives exactly the pointers of the
/// per-unit lookups, across leaf boundaries and empty subtrees.
@Suite struct TreeRangeLookupTests {
    @Test func rangeLookupEqualsPerBlockLookups() throws {
        // 32,768 blocks: a tree of depth 3 with leaves of 64 units.
        let (_, pool, volume) = try poolWithVolume(configuration: PoolConfiguration(checkpointRecords: 1))
        let block = randomBytes(4096, seed: 3)
        // Runs that straddle leaf boundaries, and whole empty subtrees between them.
        let written: [UInt64] = Array(60..<70) + [127, 128, 4095, 4096, 4097] + Array(20_000..<20_200) + [32_767]
        for logical in written { try write(volume, logical * 4096, block) }
        try volume.flush()
        let (root, depth) = try #require(pool.state.withLock { state in state.volumes.values.first.map { ($0.root, $0.depth) } })
        #expect(pool.state.withLock { $0.volumes.values.first?.overlay.isEmpty } == true, "the flush should have checkpointed")
        #expect(depth == 3)
        let tree = TreeIdentity(kind: .volumeTreeNode, object: volume.id.rawValue, depth: depth, volumeName: "v")
        let ranges: [Range<UInt64>] = [0..<32_768, 60..<70, 0..<64, 63..<65, 127..<129, 4000..<4200, 19_990..<20_300, 32_767..<32_768, 5..<5]
        for range in ranges {
            let single = try range.map { index in try pool.lookup(root: root, tree: tree, index: index) }
            let batch = try pool.lookup(root: root, tree: tree, range: range)
            #expect(batch == single, "range \(range)")
        }
        // The cached-only lookup (the fast path's) gives the same, at any
        // position of the result, once the nodes are cached; and nothing
        // when a node on the way is not.
        let sentinel = BlockPointer(block: 99, salt: .zero, counter: NonceCounter(rawValue: 9), generation: 9, tag: .zero)
        for range in ranges {
            var cached = [BlockPointer](repeating: sentinel, count: range.count + 3)
            #expect(try pool.lookup(root: root, tree: tree, range: range, cachedOnly: true, into: &cached, at: 2))
            #expect(Array(cached[2..<(2 + range.count)]) == (try pool.lookup(root: root, tree: tree, range: range)), "cached range \(range)")
            #expect(cached[0] == sentinel && cached[1] == sentinel && cached.last == sentinel, "cached range \(range) wrote outside its place")
        }
        var unused = [BlockPointer](repeating: .null, count: 2)
        #expect(try !pool.lookup(root: root, tree: tree, range: 262_143..<262_145, cachedOnly: true, into: &unused, at: 0))
        let middle = try pool.loadNode(root, tree: tree, level: 3, firstIndex: 0).children[0]
        let leaf = try pool.loadNode(middle, tree: tree, level: 2, firstIndex: 0).children[1]
        pool.nodeCache.remove(leaf)
        var missing = [BlockPointer](repeating: .null, count: 10)
        #expect(try !pool.lookup(root: root, tree: tree, range: 60..<70, cachedOnly: true, into: &missing, at: 0), "a leaf not cached")
        #expect(try pool.lookup(root: root, tree: tree, range: 200..<210, cachedOnly: true, into: &missing, at: 0), "an unwritten subtree needs no leaf")
        #expect(missing == Array(repeating: .null, count: 10))

        let all = try pool.lookup(root: root, tree: tree, range: 0..<32_768)
        #expect(all.enumerated().filter { !$0.element.isNull }.map { UInt64($0.offset) } == written)
        #expect(try pool.lookup(root: .null, tree: tree, range: 10..<20) == Array(repeating: .null, count: 10))
        #expect(throws: PoolError.self) { try pool.lookup(root: root, tree: tree, range: 262_140..<262_145) }
        try pool.close()
    }

    /// Mapping a run in the overlay replaces older entries and reports the
    /// physical blocks of the non-null ones it replaced.
    @Test func overlayMapReportsReplacedBlocks() {
        var overlay = Overlay()
        func pointer(_ block: UInt64) -> BlockPointer {
            BlockPointer(block: block, salt: .zero, counter: NonceCounter(rawValue: block), generation: 1, tag: .zero)
        }
        var replaced: [PhysicalBlock] = []
        overlay.map(from: 10, to: [pointer(100), pointer(101), .null], replaced: &replaced)
        #expect(replaced.isEmpty)
        overlay.map(from: 11, to: [pointer(200), pointer(201), pointer(202)], replaced: &replaced)
        #expect(replaced == [101])
        #expect(overlay.lookup(10) == pointer(100))
        #expect(overlay.lookup(12) == pointer(201))
        #expect(overlay.lookup(13) == pointer(202))
        #expect(overlay.lookup(14) == nil)
    }
}
