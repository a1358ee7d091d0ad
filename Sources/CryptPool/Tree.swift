import Threads
import PoolFormat

/// Which tree a node belongs to, as bound into its associated data.
struct TreeIdentity: Sendable {
    var kind: MetadataKind
    var object: UInt32
    var depth: Int
    /// Volume name, for error messages.
    var volumeName: String?
}

/// Units covered by one child of a node at `level`: 64^(level-1).
func childSpan(level: Int) -> UInt64 {
    var span: UInt64 = 1
    for _ in 1..<level { span *= UInt64(PoolLayout.fanOut) }
    return span
}

/// The smallest depth (at least 1) whose tree covers `units` leaves.
func treeDepth(units: UInt64) -> Int {
    var depth = 1
    var covered = UInt64(PoolLayout.fanOut)
    while covered < units {
        depth += 1
        covered = covered.multipliedReportingOverflow(by: UInt64(PoolLayout.fanOut)).partialValue
    }
    return depth
}

/// A change to apply to a tree's units at checkpoint time.
struct TreeChanges {
    /// New unit pointers (null to clear), sorted by index, one per index.
    var assigned: ArraySlice<(UInt64, BlockPointer)>
    /// Sorted disjoint ranges of units to clear, older than every entry of `set`.
    var cleared: [Range<UInt64>]

    /// The changes that fall inside `range`.
    func restricted(to range: Range<UInt64>) -> TreeChanges {
        let lower = firstIndex(atLeast: range.lowerBound)
        let upper = firstIndex(atLeast: range.upperBound)
        return TreeChanges(
            assigned: assigned[lower..<upper],
            cleared: cleared.compactMap { candidate in
                let clamped = candidate.clamped(to: range)
                return clamped.isEmpty ? nil : clamped
            })
    }

    var isEmpty: Bool { assigned.isEmpty && cleared.isEmpty }

    /// Whether these changes (restricted to `range`) clear the whole of it
    /// and assign nothing: a subtree released without being rewritten.
    func clearsAll(of range: Range<UInt64>) -> Bool {
        assigned.isEmpty && cleared.count == 1 && cleared[0] == range
    }

    private func firstIndex(atLeast value: UInt64) -> Int {
        var low = assigned.startIndex
        var high = assigned.endIndex
        while low < high {
            let middle = (low + high) / 2
            if assigned[middle].0 < value { low = middle + 1 } else { high = middle }
        }
        return low
    }
}

extension Pool {
    func loadNode(_ pointer: BlockPointer, tree: TreeIdentity, level: Int, firstIndex: UInt64) throws(PoolError) -> TreeNode {
        if let node = nodeCache.get(pointer) { return node }
        let plain = try openMetadata(
            pointer, kind: tree.kind, object: tree.object, level: level, firstIndex: firstIndex, volume: tree.volumeName)
        return try cacheNode(decoding: plain, at: pointer, tree: tree)
    }

    /// Decodes an opened tree node and caches it under `pointer`.
    private func cacheNode(decoding plain: [UInt8], at pointer: BlockPointer, tree: TreeIdentity) throws(PoolError) -> TreeNode {
        let node: TreeNode
        do { node = try TreeNode(decoding: plain) } catch { throw .malformed("\(tree.kind) at \(pointer.block): \(error)") }
        nodeCache.put(pointer, node)
        return node
    }

    /// Reads the nodes `children` of one parent (at `level` of `tree`,
    /// each with the first unit it covers) that are not cached, in one
    /// storage batch, and caches them. A checkpoint rebuilding them then
    /// pays one round trip per parent, not one per child: after random
    /// writes spread over a large volume most nodes it rewrites had left
    /// the cache, and it read them one at a time while writes waited for
    /// it (`.checkpointBehind`).
    func prefetchNodes(_ children: [(pointer: BlockPointer, firstIndex: UInt64)], tree: TreeIdentity, level: Int) throws(PoolError) {
        let missing = nodeCache.uncached(children)
        guard missing.count > 1 else { return }
        for child in missing { try checkPlacement(child.pointer, what: "\(tree.kind) pointer") }
        let blockSize = Self.blockSize
        var ciphertext = [UInt8](repeating: 0, count: missing.count * blockSize)
        var failure: PoolError?
        ciphertext.withUnsafeMutableBytes { buffer in
            let pieces = missing.indices.map { index in
                (missing[index].pointer.block, UnsafeMutableRawBufferPointer(rebasing: buffer[(index * blockSize)..<((index + 1) * blockSize)]))
            }
            do throws(PoolError) { try readScattered(pieces) } catch { failure = error }
        }
        if let failure { throw failure }
        for (index, child) in missing.enumerated() {
            let plain = try openMetadata(
                sealed: ciphertext[(index * blockSize)..<((index + 1) * blockSize)], child.pointer, kind: tree.kind, object: tree.object,
                level: level, firstIndex: child.firstIndex, volume: tree.volumeName)
            _ = try cacheNode(decoding: plain, at: child.pointer, tree: tree)
        }
    }

    /// The pointer to unit `index` in a checkpointed tree.
    func lookup(root: BlockPointer, tree: TreeIdentity, index: UInt64) throws(PoolError) -> BlockPointer {
        try lookup(root: root, tree: tree, range: index..<(index + 1))[0]
    }


    /// The pointers to units `range` of a checkpointed tree, in order, as
    /// `lookup(root:tree:index:)` gives them one by one; each node on the way
    /// is loaded once, not once per unit.
    func lookup(root: BlockPointer, tree: TreeIdentity, range: Range<UInt64>) throws(PoolError) -> [BlockPointer] {
        var result = [BlockPointer](repeating: .null, count: range.count)
        _ = try lookup(root: root, tree: tree, range: range, cachedOnly: false, into: &result, at: 0)
        return result
    }

    /// The places of the units of the leaf holding unit `index` of a
    /// checkpointed tree, in order (0 for an unwritten unit), from cached
    /// nodes only: false when a node on the way is not cached or `index`
    /// lies past the tree. No storage read, no allocation and no node
    /// copied out: what a placement hint (`Volume.placementHint`) is worth,
    /// and what `PlacementMemo` keeps.
    func cachedLeafPlaces(root: BlockPointer, depth: Int, index: UInt64, into places: UnsafeMutableBufferPointer<PhysicalBlock>) -> Bool {
        precondition(places.count == PoolLayout.fanOut)
        return nodeCache.locked { cache in
            guard let leaf = cachedLeaf(root: root, depth: depth, index: index, in: &cache) else { return false }
            if leaf.pointer.isNull {
                places.update(repeating: 0)
                return true
            }
            return cache.withChildren(of: leaf.pointer) { children in
                for index in children.indices { places[index] = children[index].block }
            }
        }
    }

    /// The leaf node (level 1) holding unit `index` of a checkpointed tree,
    /// or the unwritten subtree holding it (a null pointer), with the first
    /// unit it covers and how many, reached through cached nodes only,
    /// taking one child a level out of the cache (`NodeCache.children`);
    /// nil when a node on the way is not cached or `index` lies past the
    /// tree. The one walk down of the fast path's lookups, under the
    /// cache's lock, taken once by the caller.
    private func cachedLeaf(
        root: BlockPointer, depth: Int, index: UInt64, in cache: inout NodeCache.Contents
    ) -> (pointer: BlockPointer, first: UInt64, units: UInt64)? {
        let fanOut = UInt64(PoolLayout.fanOut)
        var pointer = root
        var first: UInt64 = 0
        var level = depth
        var child = BlockPointer.null
        while level > 1, !pointer.isNull {
            let span = childSpan(level: level)
            let slot = (index - first) / span
            guard slot < fanOut else { return nil }
            let copied = withUnsafeMutablePointer(to: &child) { child in
                cache.children(of: pointer, Int(slot)..<(Int(slot) + 1), into: UnsafeMutableBufferPointer(start: child, count: 1))
            }
            guard copied else { return nil }
            pointer = child
            first += slot * span
            level -= 1
        }
        // A node at `level` covers `childSpan(level) * fanOut` units; the
        // root of a deep tree may cover more than a UInt64 counts.
        let (covered, overflow) = childSpan(level: level).multipliedReportingOverflow(by: fanOut)
        let units = overflow ? UInt64.max - first : Swift.min(covered, UInt64.max - first)
        guard index - first < units else { return nil }
        return (pointer, first, units)
    }

    /// Writes the pointers of `range` over `result[position...]`, as
    /// `lookup(root:tree:range:)` gives them; with `cachedOnly`, without
    /// storage reads: false (and `result` partly written) when a node on the
    /// way is not in the cache (Volume+Asynchronous.swift).
    func lookup(
        root: BlockPointer, tree: TreeIdentity, range: Range<UInt64>, cachedOnly: Bool,
        into result: inout [BlockPointer], at position: Int
    ) throws(PoolError) -> Bool {
        var next = position
        guard cachedOnly else {
            return try collect(root, tree: tree, level: tree.depth, firstIndex: 0, range: range, into: &result, at: &next) {
                (pointer, level, first) throws(PoolError) in try loadNode(pointer, tree: tree, level: level, firstIndex: first)
            }
        }
        return cachedLookup(root: root, depth: tree.depth, range: range, into: &result, at: position)
    }

    /// The cached-only `lookup`, without copying a node out of the cache:
    /// for each leaf (or unwritten subtree) under `range`, one walk down
    /// (`cachedLeaf`), then the leaf's share of the range is copied
    /// straight into `result`. False when a node on the way is not cached,
    /// or the range runs past the tree (which the synchronous lookup then
    /// reports).
    private func cachedLookup(
        root: BlockPointer, depth: Int, range: Range<UInt64>, into result: inout [BlockPointer], at position: Int
    ) -> Bool {
        precondition(position >= 0 && position + range.count <= result.count)
        return result.withUnsafeMutableBufferPointer { output in
            nodeCache.locked { cache in cachedLookup(root: root, depth: depth, range: range, into: output, at: position, in: &cache) }
        }
    }

    /// `cachedLookup` with the cache locked: the walk for each leaf and
    /// the copy of its share, without taking the lock again.
    private func cachedLookup(
        root: BlockPointer, depth: Int, range: Range<UInt64>, into output: UnsafeMutableBufferPointer<BlockPointer>, at position: Int,
        in cache: inout NodeCache.Contents
    ) -> Bool {
        var index = range.lowerBound
        var next = position
        while index < range.upperBound {
            guard let leaf = cachedLeaf(root: root, depth: depth, index: index, in: &cache) else { return false }
            let stop = Swift.min(range.upperBound, leaf.first + leaf.units)
            let count = Int(stop - index)
            let target = UnsafeMutableBufferPointer(rebasing: output[next..<(next + count)])
            if leaf.pointer.isNull {
                target.update(repeating: .null)
            } else {
                let slot = Int(index - leaf.first)
                guard cache.children(of: leaf.pointer, slot..<(slot + count), into: target) else { return false }
            }
            next += count
            index = stop
        }
        return true
    }

    /// Writes the unit pointers of `range` under the node `pointer` at
    /// `level`, which covers units from `firstIndex` on, over `result` from
    /// `next` on, advancing `next`; gets nodes from `load`; false as soon as
    /// `load` returns nil.
    private func collect(
        _ pointer: BlockPointer, tree: TreeIdentity, level: Int, firstIndex: UInt64, range: Range<UInt64>,
        into result: inout [BlockPointer], at next: inout Int, load: (BlockPointer, Int, UInt64) throws(PoolError) -> TreeNode?
    ) throws(PoolError) -> Bool {
        guard !range.isEmpty else { return true }
        if pointer.isNull {
            for _ in range {
                result[next] = .null
                next += 1
            }
            return true
        }
        guard let node = try load(pointer, level, firstIndex) else { return false }
        let span = childSpan(level: level)
        guard (range.upperBound - 1 - firstIndex) / span < UInt64(PoolLayout.fanOut) else {
            throw .malformed("index \(range.upperBound - 1) beyond \(tree.kind) at level \(level)")
        }
        var index = range.lowerBound
        while index < range.upperBound {
            let slot = Int((index - firstIndex) / span)
            let childFirst = firstIndex + UInt64(slot) * span
            let (childEnd, overflow) = childFirst.addingReportingOverflow(span)
            let end = overflow ? range.upperBound : min(range.upperBound, childEnd)
            if level == 1 {
                result[next] = node.children[slot]
                next += 1
            } else {
                guard
                    try collect(
                        node.children[slot], tree: tree, level: level - 1, firstIndex: childFirst, range: index..<end, into: &result,
                        at: &next, load: load)
                else { return false }
            }
            index = end
        }
        return true
    }

    /// Calls `visit` for every non-null unit pointer under `pointer` with its index.
    func walk(
        _ pointer: BlockPointer, tree: TreeIdentity, level: Int, firstIndex: UInt64,
        nodes: (BlockPointer, Int, UInt64) throws(PoolError) -> Void,
        units: (UInt64, BlockPointer) throws(PoolError) -> Void
    ) throws(PoolError) {
        guard !pointer.isNull else { return }
        try nodes(pointer, level, firstIndex)
        let node = try loadNode(pointer, tree: tree, level: level, firstIndex: firstIndex)
        let span = childSpan(level: level)
        for (slot, child) in node.children.enumerated() where !child.isNull {
            let childFirst = firstIndex + UInt64(slot) * span
            if level == 1 {
                try units(childFirst, child)
            } else {
                try walk(child, tree: tree, level: level - 1, firstIndex: childFirst, nodes: nodes, units: units)
            }
        }
    }

    /// Applies a leaf's changes to its unit pointers: a unit's new pointer
    /// is its assignment, or null where only a cleared range covers it (a
    /// clear is older than every assignment); an old pointer that another
    /// replaces is released. Slot by slot through the changes, not a search
    /// of them per slot: a checkpoint after random writes rebuilds every
    /// leaf of the volume, and 64 searches a leaf were about a fifth of
    /// the rebuild's CPU.
    static func applyUnits(_ all: TreeChanges, to node: inout TreeNode, firstIndex: UInt64, releases: inout [PhysicalBlock]) {
        let changes = all.restricted(to: firstIndex..<(firstIndex + UInt64(PoolLayout.fanOut)))
        func set(_ index: UInt64, _ pointer: BlockPointer) {
            let slot = Int(index - firstIndex)
            let old = node.children[slot]
            if !old.isNull, old != pointer { releases.append(old.block) }
            node.children[slot] = pointer
        }
        let assigned = changes.assigned
        var next = assigned.startIndex
        for range in changes.cleared {
            for index in range {
                while next < assigned.endIndex, assigned[next].0 < index { next += 1 }
                if next < assigned.endIndex, assigned[next].0 == index { continue }
                set(index, .null)
            }
        }
        for (index, pointer) in assigned { set(index, pointer) }
    }

    /// Rebuilds the part of a tree that `changes` touch, copy-on-write: new
    /// nodes go to blocks from `reserve` (sealed and queued in `writes`),
    /// replaced nodes and replaced or cleared units go to `releases`, and
    /// the replaced nodes also to `retired`, to leave the node cache once
    /// the new tree is in use.
    /// Returns the new pointer for this subtree (null if it became empty).
    func rebuild(
        _ pointer: BlockPointer, tree: TreeIdentity, level: Int, firstIndex: UInt64, changes: TreeChanges,
        generation: UInt64, writes: inout CheckpointWrites, releases: inout [PhysicalBlock],
        reserve: inout NodeReserve, retired: inout [BlockPointer]
    ) throws(PoolError) -> BlockPointer {
        var node = pointer.isNull ? TreeNode() : try loadNode(pointer, tree: tree, level: level, firstIndex: firstIndex)
        let span = childSpan(level: level)
        if level == 1 {
            Self.applyUnits(changes, to: &node, firstIndex: firstIndex, releases: &releases)
        } else {
            // Each child's changes, found once for the fetch and the rebuild.
            let children = (0..<PoolLayout.fanOut).compactMap { slot -> (slot: Int, range: Range<UInt64>, changes: TreeChanges)? in
                let childFirst = firstIndex + UInt64(slot) * span
                let childRange = childFirst..<(childFirst + span)
                let inside = changes.restricted(to: childRange)
                return inside.isEmpty ? nil : (slot, childRange, inside)
            }
            // The children rebuilt below, fetched together.
            try prefetchNodes(
                children.filter { !$0.changes.clearsAll(of: $0.range) }.map { (node.children[$0.slot], $0.range.lowerBound) },
                tree: tree, level: level - 1)
            for (slot, childRange, inside) in children {
                let childFirst = childRange.lowerBound
                let old = node.children[slot]
                if inside.clearsAll(of: childRange) {
                    // The whole subtree is cleared: release it without rewriting.
                    try walk(
                        old, tree: tree, level: level - 1, firstIndex: childFirst,
                        nodes: { pointer, _, _ in
                            releases.append(pointer.block)
                            retired.append(pointer)
                        },
                        units: { _, unit in releases.append(unit.block) })
                    node.children[slot] = .null
                } else {
                    node.children[slot] = try rebuild(
                        old, tree: tree, level: level - 1, firstIndex: childFirst, changes: inside, generation: generation,
                        writes: &writes, releases: &releases, reserve: &reserve, retired: &retired)
                }
            }
        }
        if !pointer.isNull {
            releases.append(pointer.block)
            // Replaced: once the new tree is in use no tree names it again,
            // so it would only take the place of a node still in use.
            retired.append(pointer)
        }
        if node.isEmpty { return .null }
        let block = try reserve.place(from: self)
        let sealed = sealMetadata(
            node.encoded(), kind: tree.kind, object: tree.object, level: level, firstIndex: firstIndex, at: block,
            generation: generation, counter: reserve.counter(from: self))
        try writes.add(sealed, kind: tree.kind, object: tree.object, level: level, firstIndex: firstIndex, pool: self)
        nodeCache.put(sealed.pointer, node)
        return sealed.pointer
    }
}
