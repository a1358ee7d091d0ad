import PoolFormat
import Threads

/// The places of the units of recently hinted leaves of one volume's
/// checkpointed tree, so that most small writes find their placement hint
/// (`Volume.placementHint`) without walking the tree: the walk's cache
/// misses (the slot table, the entry, the leaf's children) cost 1 to
/// 1.5 µs of the crypt domain's 13 to 15 per 4 KiB random write, and
/// random writes on a 1 GiB volume hint each leaf 16 times between
/// checkpoints (`bench/CHAIN.md`, session 17).
///
/// The checkpointed tree changes only at a checkpoint, so an entry holds
/// exactly what the walk would read until then: it is kept with the count
/// of checkpoints when it was made (`Pool.checkpoints`) and ignored once
/// that moves on. A leaf's places are kept as 32-bit offsets from the
/// lowest of them (256 bytes a leaf): random overwrites leave most leaves
/// with a block or two far from the rest (the allocator's next-fit, when
/// no block near the hint is free), which 16 bits did not reach. A leaf
/// whose places span more (a pool past 16 TiB) is not kept, and its
/// writes walk.
///
/// Direct-mapped on the leaf number, with a fixed number of entries, so it
/// costs the same memory on any volume: every leaf of a 2 GiB volume fits,
/// and on a larger one, writes to leaves that share an entry take turns
/// walking. The entries are made at the first write that hints (a volume
/// only read, or opened to be verified, costs nothing). A hint is a
/// preference of the allocator: nothing here can change which data a
/// read returns.
final class PlacementMemo: Sendable {
    private struct Leaf {
        /// `PlacementMemo.noLeaf` for none.
        var number: UInt64
        /// `Pool.checkpoints` when the entry was made.
        var checkpoint: UInt64
        /// The lowest place of the leaf's units; they are offsets from it.
        var base: PhysicalBlock
    }

    private struct Contents {
        var leaves = [Leaf](repeating: Leaf(number: PlacementMemo.noLeaf, checkpoint: 0, base: 0), count: PlacementMemo.capacity)
        /// `fanOut` offsets per entry; `unwritten` for a unit with no place.
        var offsets = [UInt32](repeating: PlacementMemo.unwritten, count: PlacementMemo.capacity * PoolLayout.fanOut)
    }

    /// Entries: 256 bytes of offsets and 24 of header each, 2.2 MiB per
    /// served volume; one a leaf of `PoolLayout.fanOut` blocks.
    static let capacity = 8192
    private static let noLeaf = UInt64.max
    private static let unwritten = UInt32.max

    /// Nil until the first `remember`.
    private let contents = Guarded<Contents?>(nil)

    /// The places of units `at - 1`, `at` and `at + 1` of leaf `leaf`, as
    /// far as the leaf has them (nil for a unit with no place or outside
    /// the leaf), if the leaf is kept from checkpoint `checkpoint`.
    func neighbourhood(
        leaf: UInt64, at: Int, checkpoint: UInt64
    ) -> (previous: PhysicalBlock?, current: PhysicalBlock?, next: PhysicalBlock?)? {
        precondition(at >= 0 && at < PoolLayout.fanOut)
        let slot = Self.slot(leaf)
        return contents.withLock { contents in
            guard let contents else { return nil }
            let entry = contents.leaves[slot]
            guard entry.number == leaf, entry.checkpoint == checkpoint else { return nil }
            let first = slot * PoolLayout.fanOut
            func place(_ unit: Int) -> PhysicalBlock? {
                guard unit >= 0, unit < PoolLayout.fanOut else { return nil }
                let offset = contents.offsets[first + unit]
                return offset == Self.unwritten ? nil : entry.base + PhysicalBlock(offset)
            }
            return (place(at - 1), place(at), place(at + 1))
        }
    }

    /// Keeps the places of leaf `leaf` (0 for a unit with no place) as of
    /// checkpoint `checkpoint`, unless they lie too far apart.
    func remember(leaf: UInt64, checkpoint: UInt64, places: UnsafeBufferPointer<PhysicalBlock>) {
        precondition(places.count == PoolLayout.fanOut)
        let base = places.lazy.filter { $0 != 0 }.min() ?? 0
        guard places.allSatisfy({ $0 == 0 || $0 - base < PhysicalBlock(Self.unwritten) }) else { return }
        let slot = Self.slot(leaf)
        contents.withLock { contents in
            // Moved out and back, so the arrays stay uniquely referenced
            // and change in place.
            var kept = contents.take() ?? Contents()
            kept.leaves[slot] = Leaf(number: leaf, checkpoint: checkpoint, base: base)
            let first = slot * PoolLayout.fanOut
            for (unit, place) in places.enumerated() {
                kept.offsets[first + unit] = place == 0 ? Self.unwritten : UInt32(place - base)
            }
            contents = kept
        }
    }

    private static func slot(_ leaf: UInt64) -> Int { Int(leaf % UInt64(capacity)) }
}
