import Keys
#if canImport(Glibc)
import Glibc
#endif
import PoolFormat

extension Pool {
    /// Folds every change since the last checkpoint into the trees and
    /// writes a new checkpoint: volume trees, volume table and pool object
    /// to new blocks, the space map into the region the durable checkpoint
    /// does not use, then the superblock (docs/format.md, section 7).
    /// Callers serialise commits and hold the gate exclusively, unless
    /// `besideIO`: then reads and writes go on while the checkpoint folds
    /// and writes, and it takes the gate itself only to begin (so that no
    /// write is half done when it takes its records and the space map) and
    /// to switch to the new trees (so that no read still walks the old ones
    /// when their blocks are freed). A volume table change needs the gate
    /// throughout.
    func checkpoint(
        besideIO: Bool = false,
        volumeTableChange: (inout VolumeStates, inout [PhysicalBlock]) throws(PoolError) -> Void = { _, _ in }
    ) throws(PoolError) {
        // The space map region this checkpoint overwrites is the one the
        // previous checkpoint did not use; that holds only once the newest
        // superblock is durable, so a failed superblock write is retried first.
        try checkUsable()
        if let unsynced = state.withLock({ $0.unsyncedSuperblock }) { try writeSuperblock(unsynced) }
        var start = besideIO ? gate.withExclusive { state.withLock(beginCheckpoint) } : state.withLock(beginCheckpoint)
        let (taken, releasedEarlier, generation, takenEpoch) = (start.taken, start.releasedEarlier, start.generation, start.takenEpoch)
        var releases = releasedEarlier
        var writes = CheckpointWrites(epoch: storageEpoch)
        // Blocks this checkpoint allocated: released again if it fails
        // before the state switches to it, since nothing then refers to them.
        var allocated: [PhysicalBlock] = []
        // The new tree nodes' places and counters, until the trees are
        // rebuilt; then its places used join `allocated`.
        var reserve = NodeReserve()
        // Tree nodes the new trees replace: dropped from the node cache at
        // the switch, while reads beside the checkpoint still walk them.
        var retired: [BlockPointer] = []
        // The region this checkpoint rewrites, until its blocks are durable:
        // if the checkpoint fails before then, the region's blocks may hold
        // anything, so its image must not be trusted by the next checkpoint.
        var unsettledRegion: Int?
        // Once the state has moved to this checkpoint, a failure leaves it
        // there: its superblock is retried (unsyncedSuperblock), and the
        // records it folded in must not be logged again over it.
        var stateSwitched = false
        do throws(PoolError) {
            var volumes = start.volumes
            start.volumes = VolumeStates()
            try volumeTableChange(&volumes, &releases)

            // Volume trees.
            for (id, fold) in start.folds {
                guard let volume = volumes[id] else {
                    // Deleted by the table change: its changes go with it.
                    releases += fold.mapped.values.filter { !$0.isNull }.map(\.block)
                    continue
                }
                let changes = TreeChanges(
                    assigned: ArraySlice(KeyOrder.sorted(fold.mapped)), cleared: fold.unmapped)
                let tree = TreeIdentity(kind: .volumeTreeNode, object: id.rawValue, depth: volume.depth, volumeName: volume.name)
                let root = try rebuild(
                    volume.root, tree: tree, level: volume.depth, firstIndex: 0, changes: changes, generation: generation,
                    writes: &writes, releases: &releases, reserve: &reserve, retired: &retired)
                volumes.update(id) { $0.root = root }
            }
            allocated += reserve.finish(pool: self)
            // Folded: the state's `folding` overlays are the only references left.
            start.folds = [:]

            // Volume table and pool object locations.
            let records = volumes.values
            let tableBlocks = stride(from: 0, to: records.count, by: PoolLayout.volumesPerTableBlock).map {
                Array(records[$0..<min($0 + PoolLayout.volumesPerTableBlock, records.count)])
            }
            let (oldTable, oldObject, oldLog, nextVolumeID, region) = state.withLock {
                ($0.volumeTable, $0.poolObject, $0.logBlocks, $0.nextVolumeID, 1 - $0.spaceMapRegion)
            }
            guard let locations = state.withLock({ $0.space.allocate(tableBlocks.count + 1) }) else { throw .noSpace }
            allocated += locations
            releases += oldTable.map(\.block) + oldLog
            if !oldObject.isNull { releases.append(oldObject.block) }
            var tablePointers: [BlockPointer] = []
            for (index, group) in tableBlocks.enumerated() {
                var entries: [VolumeRecord] = []
                for volume in group {
                    let key = volume.key.secret.withUnsafeBytes { Array($0) }
                    entries.append(
                        VolumeRecord(id: volume.id, name: volume.name, size: volume.size, depth: UInt16(volume.depth), root: volume.root, key: key))
                }
                var plain = VolumeTableBlock(volumes: entries).encoded()
                let sealed = try sealMetadata(
                    plain, kind: .volumeTable, object: 0, level: 0, firstIndex: UInt64(index), at: locations[index], generation: generation)
                plain.withUnsafeMutableBytes { zeroize($0) }
                try writes.add(sealed, kind: .volumeTable, object: 0, level: 0, firstIndex: UInt64(index), pool: self)
                tablePointers.append(sealed.pointer)
            }
            let objectBlock = locations[tableBlocks.count]

            // Space map: the state after this checkpoint is everything in use
            // when it began and everything it allocated, except what it frees
            // (blocks written beside it belong to the next commit's records).
            unsettledRegion = region
            start.space.mark(allocated, inUse: true)
            start.space.mark(releases, inUse: false)
            let spaceMapRoot = try writeSpaceMap(region: region, image: start.space, generation: generation, writes: &writes)

            let object = PoolObject(
                blockCount: blockCount, spaceMapDepth: UInt16(geometry.depth), spaceMapRoot: spaceMapRoot, volumeTable: tablePointers,
                nextVolumeID: nextVolumeID)
            let sealedObject = try sealMetadata(
                object.encoded(), kind: .poolObject, object: 0, level: 0, firstIndex: 0, at: objectBlock, generation: generation)
            try writes.add(sealedObject, kind: .poolObject, object: 0, level: 0, firstIndex: 0, pool: self)

            try writes.send(through: self)
            try flushStorage(
                covering: UnflushedWrites(
                    sealed: writes.checks, records: taken, oldestEpoch: min(takenEpoch ?? writes.epoch, writes.epoch)))
            unsettledRegion = nil

            let superblock = Superblock(
                poolID: poolID, generation: generation, anchorEpoch: state.withLock { $0.anchorEpoch }, checkpointRoot: sealedObject.pointer, logHead: .null,
                logRecordCount: 0, logBlockCount: 0)
            func switchState(_ state: inout PoolState) {
                state.checkpointFolding = false
                state.generation = generation
                state.adoptCheckpointed(volumes, overlayCapacity: 2 * configuration.checkpointRecords)
                state.volumeTable = tablePointers
                state.poolObject = sealedObject.pointer
                state.logHead = .null
                state.logBlocks = []
                state.logRecordCount = 0
                state.spaceMapRegion = region
            }
            if besideIO { gate.withExclusive { state.withLock(switchState) } } else { state.withLock(switchState) }
            stateSwitched = true
            checkpoints.add(1, ordering: .releasing)
            nodeCache.remove(contentsOf: retired)
            try writeSuperblock(superblock)
            state.withLock { state in for block in releases { state.space.release(block) } }
        } catch {
            state.withLock { state in
                if let unsettledRegion { state.regions[unsettledRegion] = SpaceMapRegionImage(geometry: geometry) }
                // After the switch, the blocks this checkpoint frees stay
                // allocated until the pool is reopened: freeing them before
                // its superblock is durable could hand out live blocks.
                if !stateSwitched {
                    state.checkpointFolding = false
                    for block in allocated + reserve.taken { state.space.release(block) }
                    var replaced: [PhysicalBlock] = []
                    state.volumes.updateEach { $0.unfreeze(replaced: &replaced) }
                    state.pending.insert(contentsOf: taken, at: 0)
                    state.releaseAfterCommit.insert(contentsOf: releasedEarlier, at: 0)
                    state.releaseAfterCommit += replaced
                    state.notePendingWrites(since: takenEpoch)
                }
            }
            throw error
        }
    }

    /// Takes what a checkpoint starts from: the records and releases since
    /// the last commit, the space map, and each volume's changes, which
    /// become its `folding` overlay while writes go to a new one.
    private func beginCheckpoint(_ state: inout PoolState) -> CheckpointStart {
        // A rollover in the middle would be harmless but is avoided so
        // one checkpoint seals under one session key.
        if state.metadataCounter > maxSealsPerSessionKey - (1 << 24) { startSession(in: &state) }
        var start = CheckpointStart(
            taken: state.pending, releasedEarlier: state.releaseAfterCommit, generation: state.generation + 1,
            takenEpoch: state.pendingEpoch,
            // Every block in use now is named by the trees, the records taken
            // (folded in now) or the blocks to release; none is a write under
            // way, which the gate excludes.
            space: state.space.persistedImage(), volumes: VolumeStates(), folds: [:])
        state.pending = []
        state.releaseAfterCommit = []
        state.pendingEpoch = nil
        state.checkpointFolding = true
        state.volumes.updateEach { $0.freeze() }
        for var volume in state.volumes.values {
            if !volume.folding.isEmpty { start.folds[volume.id] = volume.folding }
            volume.overlay = Overlay()
            volume.folding = Overlay()
            start.volumes.insert(volume)
        }
        return start
    }

    /// Writes the bitmap blocks and tree nodes of `region` that differ from
    /// what the region last held, at their fixed places, for the map
    /// `persisted`. Returns the root.
    private func writeSpaceMap(
        region: Int, image persisted: PersistedSpaceMap, generation: UInt64, writes: inout CheckpointWrites
    ) throws(PoolError) -> BlockPointer {
        var image = state.withLock { $0.regions[region] }
        var changed = Set<Int>()
        for index in 0..<geometry.leafCount {
            let content = persisted.bitmapBlock(index)
            guard image.leaves[index] != content || image.leafPointers[index] == nil else { continue }
            let block = geometry.leaf(index, region: region)
            let sealed = try sealMetadata(
                content, kind: .spaceMapBitmap, object: UInt32(region), level: 0, firstIndex: UInt64(index), at: block,
                generation: generation)
            try writes.add(sealed, kind: .spaceMapBitmap, object: UInt32(region), level: 0, firstIndex: UInt64(index), pool: self)
            image.leaves[index] = content
            image.leafPointers[index] = sealed.pointer
            changed.insert(index)
        }
        let tree = TreeIdentity(kind: .spaceMapNode, object: UInt32(region), depth: geometry.depth)
        for level in 1...geometry.depth {
            var changedHere = Set<Int>()
            let childCount = level == 1 ? geometry.leafCount : geometry.nodesPerLevel[level - 2]
            for index in 0..<geometry.nodesPerLevel[level - 1] {
                let children = (index * PoolLayout.fanOut)..<min((index + 1) * PoolLayout.fanOut, childCount)
                guard image.nodePointers[level - 1][index] == nil || children.contains(where: changed.contains) else { continue }
                var node = TreeNode()
                for child in children {
                    let pointer = level == 1 ? image.leafPointers[child] : image.nodePointers[level - 2][child]
                    node.children[child - children.lowerBound] = pointer ?? .null
                }
                let block = geometry.node(level: level, index: index, region: region)
                let firstIndex = UInt64(index) * childSpan(level: level) * UInt64(PoolLayout.fanOut)
                let sealed = try sealMetadata(
                    node.encoded(), kind: tree.kind, object: tree.object, level: level, firstIndex: firstIndex, at: block,
                    generation: generation)
                try writes.add(sealed, kind: tree.kind, object: tree.object, level: level, firstIndex: firstIndex, pool: self)
                // The node this block held is overwritten: drop it from the cache.
                if let replaced = image.nodePointers[level - 1][index] { nodeCache.remove(replaced) }
                image.nodes[level - 1][index] = node
                image.nodePointers[level - 1][index] = sealed.pointer
                nodeCache.put(sealed.pointer, node)
                changedHere.insert(index)
            }
            changed = changedHere
        }
        state.withLock { $0.regions[region] = image }
        return image.nodePointers[geometry.depth - 1][0]!
    }
}

/// What a checkpoint starts from, taken at one instant (`beginCheckpoint`).
private struct CheckpointStart {
    var taken: [LogRecord]
    var releasedEarlier: [PhysicalBlock]
    var generation: UInt64
    var takenEpoch: UInt64?
    /// The space map as the checkpoint began.
    var space: PersistedSpaceMap
    /// The volumes as the checkpoint writes them, holding no overlay, and
    /// apart from them the changes to fold: the state keeps the only
    /// reference to the overlays that writes change.
    var volumes: VolumeStates
    var folds: [VolumeID: Overlay]
}

/// Overwrites secret bytes before their memory is released.
func zeroize(_ buffer: UnsafeMutableRawBufferPointer) {
    guard let base = buffer.baseAddress else { return }
    explicit_bzero(base, buffer.count)
}
