import PoolFormat

extension Volume {
    /// Where a small write of `blocks` should go: beside its logical
    /// neighbours, so that random overwrites keep a volume's blocks in
    /// logical order on the pool (`SpaceMap.allocate(_:near:)`) and a later
    /// sequential read costs few storage requests. Of three places, right
    /// after the block before, right before the block after, and where the
    /// blocks are now, the first that another agrees with (within
    /// `neighbourhood`) wins: a block put far away by an earlier write
    /// whose neighbours sit together rejoins them, and a block beside one
    /// neighbour does not follow the other away. Nil for a large write
    /// (placed in free extents), or when no neighbour is known.
    ///
    /// The places come from the checkpointed tree's cached nodes alone
    /// (`Pool.cachedLeafPlaces`), a whole leaf at a time, kept until the
    /// next checkpoint by `PlacementMemo`, which spares most writes the
    /// walk's cache misses. A hint is never worth a
    /// storage read, and the overlay would cost three more lookups per
    /// write for places that differ from the tree's only by an overwrite,
    /// which went beside them. The walk runs outside the state lock, which
    /// it used to hold while waiting for the node cache's: a checkpoint,
    /// rewriting every leaf, takes that one thousands of times, and the
    /// data path's other users of the state lock queued behind
    /// (`bench/CHAIN.md`, session 16). A root that a checkpoint replaces
    /// meanwhile only makes the hint older, or nil once its nodes leave
    /// the cache.
    func placementHint(for blocks: Range<UInt64>) throws(PoolError) -> PhysicalBlock? {
        guard blocks.count < SpaceMap.extentBlocks else { return nil }
        let checkpoint = pool.checkpoints.load(ordering: .acquiring)
        var tree: (root: BlockPointer, depth: Int)?
        let here = try neighbourhood(of: blocks.lowerBound, checkpoint: checkpoint, tree: &tree)
        let previous = blocks.lowerBound > 0 ? here.previous : nil
        let next = blocks.count == 1 ? here.next : try neighbourhood(of: blocks.upperBound, checkpoint: checkpoint, tree: &tree).current
        let after = previous.map { $0 &+ 1 }
        let before = next.map { $0 &- UInt64(blocks.count) }
        let current = here.current
        func agree(_ a: PhysicalBlock?, _ b: PhysicalBlock?) -> Bool {
            guard let a, let b else { return false }
            return (a > b ? a - b : b - a) <= Self.neighbourhood
        }
        if agree(after, before) || agree(after, current) { return after }
        if agree(before, current) { return current }
        return after ?? before ?? current
    }

    /// The checkpointed tree's places of units `index - 1`, `index` and
    /// `index + 1`, as far as the leaf holding `index` has them: from
    /// `placements`, else from the cached nodes (nil where a node is not
    /// cached), which `placements` then keeps. `tree` is the volume's root
    /// and depth, read under the state lock by the first walk of a hint.
    private func neighbourhood(
        of index: UInt64, checkpoint: UInt64, tree: inout (root: BlockPointer, depth: Int)?
    ) throws(PoolError) -> (previous: PhysicalBlock?, current: PhysicalBlock?, next: PhysicalBlock?) {
        let fanOut = UInt64(PoolLayout.fanOut)
        let leaf = index / fanOut
        let at = Int(index % fanOut)
        if let kept = placements.neighbourhood(leaf: leaf, at: at, checkpoint: checkpoint) { return kept }
        let (root, depth): (BlockPointer, Int)
        if let tree {
            (root, depth) = tree
        } else {
            guard let found = pool.state.withLock({ $0.volumes.update(id, { ($0.root, $0.depth) }) }) else {
                throw .noSuchVolume(name)
            }
            tree = found
            (root, depth) = found
        }
        // The leaf's places, copied out to the stack.
        var places = InlineArray<64, PhysicalBlock>(repeating: 0)
        var span = places.mutableSpan
        return span.withUnsafeMutableBufferPointer { places in
            guard pool.cachedLeafPlaces(root: root, depth: depth, index: index, into: places) else { return (nil, nil, nil) }
            placements.remember(leaf: leaf, checkpoint: checkpoint, places: UnsafeBufferPointer(places))
            func place(_ unit: Int) -> PhysicalBlock? {
                guard unit >= 0, unit < PoolLayout.fanOut, places[unit] != 0 else { return nil }
                return places[unit]
            }
            return (place(at - 1), place(at), place(at + 1))
        }
    }

    /// Blocks apart that two places may lie and still count as one
    /// neighbourhood for `placementHint`: the span the allocator searches
    /// around a hint.
    private static let neighbourhood = UInt64(SpaceMap.hintSearchWords * 64)
}
