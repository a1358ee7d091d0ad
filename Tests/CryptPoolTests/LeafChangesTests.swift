import PoolFormat
import Testing

@testable import CryptPool

/// `Pool.applyUnits`, the leaf step of a checkpoint's rebuild, against the
/// rule it implements, slot by slot: a unit takes its assignment, or null
/// where only a clear covers it; an old pointer replaced by another is
/// released, once.
@Suite struct LeafChangesTests {
    static func pointer(_ block: UInt64) -> BlockPointer {
        BlockPointer(block: block, salt: .zero, counter: NonceCounter(rawValue: block), generation: 1, tag: .zero)
    }

    /// The rule, one slot at a time.
    static func expected(_ changes: TreeChanges, old: [BlockPointer], firstIndex: UInt64) -> ([BlockPointer], [PhysicalBlock]) {
        var children = old
        var releases: [PhysicalBlock] = []
        for slot in 0..<PoolLayout.fanOut {
            let index = firstIndex + UInt64(slot)
            let assignment = changes.assigned.first { $0.0 == index }?.1
            let cleared = changes.cleared.contains { $0.contains(index) }
            guard assignment != nil || cleared else { continue }
            let new = assignment ?? .null
            if !old[slot].isNull, old[slot] != new { releases.append(old[slot].block) }
            children[slot] = new
        }
        return (children, releases)
    }

    @Test func randomLeavesMatchTheSlotBySlotRule() {
        var generator = SystemRandomNumberGenerator()
        let fanOut = UInt64(PoolLayout.fanOut)
        for round in 0..<500 {
            let firstIndex = UInt64.random(in: 0..<1000, using: &generator) * fanOut
            var node = TreeNode()
            for slot in 0..<PoolLayout.fanOut where Bool.random(using: &generator) {
                node.children[slot] = Self.pointer(1000 + UInt64(slot))
            }
            let old = node.children
            // Assignments (some re-assigning the pointer already there) and
            // clears, some reaching past the leaf on either side.
            var assigned: [(UInt64, BlockPointer)] = []
            for slot in 0..<PoolLayout.fanOut where Int.random(in: 0..<4, using: &generator) == 0 {
                let reuse = !old[slot].isNull && Int.random(in: 0..<5, using: &generator) == 0
                let new = reuse ? old[slot] : (Bool.random(using: &generator) ? Self.pointer(5000 + UInt64(slot)) : .null)
                assigned.append((firstIndex + UInt64(slot), new))
            }
            var cleared: [Range<UInt64>] = []
            var cursor = firstIndex == 0 ? 0 : firstIndex - UInt64.random(in: 0...3, using: &generator)
            while cursor < firstIndex + fanOut + 4, Int.random(in: 0..<3, using: &generator) > 0 {
                let start = cursor + UInt64.random(in: 0...20, using: &generator)
                let end = start + UInt64.random(in: 1...12, using: &generator)
                cleared.append(start..<end)
                cursor = end + 1
            }
            let changes = TreeChanges(assigned: assigned[...], cleared: cleared)
            let (children, releases) = Self.expected(changes, old: old, firstIndex: firstIndex)
            var released: [PhysicalBlock] = []
            Pool.applyUnits(changes, to: &node, firstIndex: firstIndex, releases: &released)
            #expect(node.children == children, "round \(round): children differ")
            #expect(released.sorted() == releases.sorted(), "round \(round): releases differ")
        }
    }
}
