import PoolFormat
import Threads

/// Authenticated, decoded tree nodes, bounded in count. An entry matches
/// only the whole pointer it was put with (block, session, counter, tag),
/// so a block that is freed and rewritten never hits an old entry; the
/// index (`BlockSlotTable`) hashes just the block number, one slot per
/// block, since hashing the 64-byte pointer at every level of every lookup
/// cost more than the comparison.
///
/// Eviction is CLOCK (second chance): a node used (got) since the hand last
/// passed it is spared once, so the upper levels, used by every lookup, and
/// a working set that fits stay cached, while nodes loaded once (a scan, or
/// the other volumes' trees) go first. A node put is not marked used: the
/// hand has just passed its slot, so it has a whole turn to be used. With random eviction a volume whose
/// tree fits the cache kept missing after another volume's tree had been
/// used, and every miss sends a request down the synchronous path.
final class NodeCache: Sendable {
    private struct Entries {
        var slots: BlockSlotTable
        // Parallel arrays indexed by slot.
        var keys: [BlockPointer] = []
        var nodes: [TreeNode] = []
        var used: [Bool] = []
        var hand = 0

        /// The slot holding exactly `pointer`, marked used; nil if none.
        mutating func usedSlot(of pointer: BlockPointer) -> Int? {
            guard let slot = slots[pointer.block], keys[slot] == pointer else { return nil }
            // Written only when not marked: the upper levels are got by
            // every lookup on every thread.
            if !used[slot] { used[slot] = true }
            return slot
        }

        /// The slot to reuse: the first one from the hand on not used since
        /// the hand last passed, clearing the marks it passes.
        mutating func victim() -> Int {
            while true {
                if hand >= keys.count { hand = 0 }
                if !used[hand] {
                    defer { hand += 1 }
                    return hand
                }
                used[hand] = false
                hand += 1
            }
        }
    }

    private let entries: Guarded<Entries>
    let capacity: Int

    init(capacity: Int) {
        self.capacity = max(capacity, 16)
        entries = Guarded(Entries(slots: BlockSlotTable(capacity: self.capacity)))
    }

    func get(_ pointer: BlockPointer) -> TreeNode? {
        entries.withLock { entries in
            entries.usedSlot(of: pointer).map { entries.nodes[$0] }
        }
    }

    /// Children `range` of the node cached for `pointer`, copied out into
    /// `into` under the cache's lock without retaining the node; false when
    /// it is not cached.
    func children(of pointer: BlockPointer, _ range: Range<Int>, into: UnsafeMutableBufferPointer<BlockPointer>) -> Bool {
        precondition(range.lowerBound >= 0 && range.upperBound <= PoolLayout.fanOut && range.count <= into.count)
        return entries.withLock { entries in
            guard let slot = entries.usedSlot(of: pointer) else { return false }
            // SAFETY: `slot` indexes `nodes`, and every node has `fanOut` children.
            entries.nodes.withUnsafeBufferPointer { nodes in
                nodes[slot].children.withUnsafeBufferPointer { children in
                    for (offset, index) in range.enumerated() { into[offset] = children[index] }
                }
            }
            return true
        }
    }

    func put(_ pointer: BlockPointer, _ node: TreeNode) {
        entries.withLock { entries in
            if let slot = entries.slots[pointer.block] {
                // The same node again, or its block rewritten: the old
                // pointer no longer names anything live.
                entries.keys[slot] = pointer
                entries.nodes[slot] = node
            } else if entries.keys.count >= capacity {
                let slot = entries.victim()
                entries.slots[entries.keys[slot].block] = nil
                entries.keys[slot] = pointer
                entries.nodes[slot] = node
                entries.used[slot] = false
                entries.slots[pointer.block] = slot
            } else {
                entries.slots[pointer.block] = entries.keys.count
                entries.keys.append(pointer)
                entries.nodes.append(node)
                entries.used.append(false)
            }
        }
    }

    /// Drops a node no tree names any more (replaced by a checkpoint).
    func remove(_ pointer: BlockPointer) {
        entries.withLock { entries in
            guard let slot = entries.slots[pointer.block], entries.keys[slot] == pointer else { return }
            entries.slots[pointer.block] = nil
            let last = entries.keys.count - 1
            if slot != last {
                entries.keys[slot] = entries.keys[last]
                entries.nodes[slot] = entries.nodes[last]
                entries.used[slot] = entries.used[last]
                entries.slots[entries.keys[slot].block] = slot
            }
            entries.keys.removeLast()
            entries.nodes.removeLast()
            entries.used.removeLast()
        }
    }

    var count: Int { entries.withLock { $0.keys.count } }
}
