import PoolFormat

/// Physical block to node-cache slot (`NodeCache`): open addressing with
/// linear probing, at most half full, and backward-shift removal, so a
/// lookup is one probe run in one array of 16-byte entries, with no SipHash
/// and none of a `Dictionary`'s separate key and value arrays. The node
/// cache is looked up at every tree level of every request, and its lookups
/// are bound by cache misses. Block numbers come from the allocator, never
/// from outside the crypt domain, so a fixed multiplicative hash is safe.
struct BlockSlotTable {
    private var entries: [(block: PhysicalBlock, slot: Int)]
    private let shift: UInt64
    private(set) var count = 0

    /// No block is this: pools are far smaller.
    private static let empty = PhysicalBlock.max

    /// A table for at most `capacity` entries.
    init(capacity: Int) {
        var bits = 1
        while 1 << bits < 2 * Swift.max(capacity, 1) { bits += 1 }
        entries = Array(repeating: (Self.empty, 0), count: 1 << bits)
        shift = UInt64(64 - bits)
    }

    /// Fibonacci hashing: the top bits of the product, which spread
    /// consecutive blocks (a checkpoint writes its nodes together) evenly.
    private func home(_ block: PhysicalBlock) -> Int { Int(truncatingIfNeeded: (block &* 0x9E37_79B9_7F4A_7C15) >> shift) }

    private var mask: Int { entries.count - 1 }

    /// Where `block` is, or the empty entry where it would go.
    private func position(of block: PhysicalBlock) -> Int {
        var index = home(block)
        while entries[index].block != Self.empty, entries[index].block != block { index = (index + 1) & mask }
        return index
    }

    subscript(block: PhysicalBlock) -> Int? {
        get {
            let entry = entries[position(of: block)]
            return entry.block == block ? entry.slot : nil
        }
        set {
            precondition(block != Self.empty)
            let index = position(of: block)
            if let slot = newValue {
                if entries[index].block != block {
                    precondition(2 * (count + 1) <= entries.count, "node cache index over capacity")
                    count += 1
                }
                entries[index] = (block, slot)
            } else if entries[index].block == block {
                remove(at: index)
            }
        }
    }

    /// Empties entry `hole`, moving back the entries after it whose home
    /// is at or before the hole, so that no probe run is broken.
    private mutating func remove(at position: Int) {
        var hole = position
        var next = position
        while true {
            next = (next + 1) & mask
            let block = entries[next].block
            if block == Self.empty { break }
            let home = home(block)
            // Whether `home` lies cyclically outside (hole, next]: then the
            // entry at `next` may move back into the hole.
            let movable = hole <= next ? (home <= hole || home > next) : (home <= hole && home > next)
            if movable {
                entries[hole] = entries[next]
                hole = next
            }
        }
        entries[hole] = (Self.empty, 0)
        count -= 1
    }
}
