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
    /// One cached node: its pointer, the node, and its CLOCK mark, side by
    /// side, so that a lookup's comparison and mark touch one place.
    fileprivate struct Entry {
        var key: BlockPointer
        var node: TreeNode
        var used: Bool
    }

    /// The cache's contents, reached only under its lock (`locked`).
    struct Contents {
        fileprivate var slots: BlockSlotTable
        fileprivate var entries: [Entry] = []
        fileprivate var hand = 0

        /// The slot holding exactly `pointer`, marked used; nil if none.
        fileprivate mutating func usedSlot(of pointer: BlockPointer) -> Int? {
            guard let slot = slots[pointer.block], entries[slot].key == pointer else { return nil }
            // Written only when not marked: the upper levels are got by
            // every lookup on every thread.
            if !entries[slot].used { entries[slot].used = true }
            return slot
        }

        fileprivate mutating func remove(_ pointer: BlockPointer) {
            guard let slot = slots[pointer.block], entries[slot].key == pointer else { return }
            slots[pointer.block] = nil
            let last = entries.count - 1
            if slot != last {
                entries.swapAt(slot, last)
                slots[entries[slot].key.block] = slot
            }
            entries.removeLast()
        }

        /// The slot to reuse: the first one from the hand on not used since
        /// the hand last passed, clearing the marks it passes.
        fileprivate mutating func victim() -> Int {
            while true {
                if hand >= entries.count { hand = 0 }
                if !entries[hand].used {
                    defer { hand += 1 }
                    return hand
                }
                entries[hand].used = false
                hand += 1
            }
        }

        /// Runs `body` on the children of the node cached for `pointer`,
        /// in place (no copy of the node, no retain); false, without
        /// running it, when it is not cached.
        mutating func withChildren(of pointer: BlockPointer, _ body: (UnsafeBufferPointer<BlockPointer>) -> Void) -> Bool {
            guard let slot = usedSlot(of: pointer) else { return false }
            // SAFETY: `slot` indexes `entries`; the buffers live for the call.
            entries.withUnsafeBufferPointer { entries in
                entries[slot].node.children.withUnsafeBufferPointer { children in
                    precondition(children.count == PoolLayout.fanOut)
                    body(children)
                }
            }
            return true
        }

        /// Copies children `range` of the node cached for `pointer` into
        /// `into`; false when it is not cached.
        mutating func children(of pointer: BlockPointer, _ range: Range<Int>, into: UnsafeMutableBufferPointer<BlockPointer>) -> Bool {
            precondition(range.lowerBound >= 0 && range.upperBound <= PoolLayout.fanOut && range.count <= into.count)
            return withChildren(of: pointer) { children in
                for (offset, index) in range.enumerated() { into[offset] = children[index] }
            }
        }
    }

    private let entries: Guarded<Contents>
    let capacity: Int

    init(capacity: Int) {
        self.capacity = max(capacity, 16)
        entries = Guarded(Contents(slots: BlockSlotTable(capacity: self.capacity)))
    }

    func get(_ pointer: BlockPointer) -> TreeNode? {
        entries.withLock { entries in
            entries.usedSlot(of: pointer).map { entries.entries[$0].node }
        }
    }

    /// Runs `body` with the cache locked: a walk down several levels
    /// takes the lock once rather than once a level.
    func locked<R>(_ body: (inout Contents) -> R) -> R {
        entries.withLock { body(&$0) }
    }

    func put(_ pointer: BlockPointer, _ node: TreeNode) {
        entries.withLock { entries in
            if let slot = entries.slots[pointer.block] {
                // The same node again, or its block rewritten: the old
                // pointer no longer names anything live.
                entries.entries[slot].key = pointer
                entries.entries[slot].node = node
            } else if entries.entries.count >= capacity {
                let slot = entries.victim()
                entries.slots[entries.entries[slot].key.block] = nil
                entries.entries[slot] = Entry(key: pointer, node: node, used: false)
                entries.slots[pointer.block] = slot
            } else {
                entries.slots[pointer.block] = entries.entries.count
                entries.entries.append(Entry(key: pointer, node: node, used: false))
            }
        }
    }

    /// Drops a node no tree names any more (replaced by a checkpoint).
    func remove(_ pointer: BlockPointer) {
        entries.withLock { $0.remove(pointer) }
    }

    /// Removes `pointers`, taking the lock once per `lockBatch` of them:
    /// a checkpoint after random writes retires every leaf of a volume,
    /// and the data path's lookups wait for this lock (`bench/CHAIN.md`,
    /// session 16).
    func remove(contentsOf pointers: [BlockPointer]) {
        for start in stride(from: 0, to: pointers.count, by: Self.lockBatch) {
            entries.withLock { entries in
                for pointer in pointers[start..<Swift.min(start + Self.lockBatch, pointers.count)] { entries.remove(pointer) }
            }
        }
    }

    /// The children (each with the first unit it covers) whose nodes are
    /// written and not cached, under one lock; those cached count as used.
    func uncached(_ children: [(pointer: BlockPointer, firstIndex: UInt64)]) -> [(pointer: BlockPointer, firstIndex: UInt64)] {
        entries.withLock { entries in children.filter { !$0.pointer.isNull && entries.usedSlot(of: $0.pointer) == nil } }
    }

    /// Entries handled per trip through the lock by the batch operations:
    /// short enough that a lookup waiting behind them waits a few µs.
    static let lockBatch = 64

    var count: Int { entries.withLock { $0.entries.count } }
}
