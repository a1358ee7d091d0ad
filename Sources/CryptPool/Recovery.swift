import Keys
import PoolFormat

extension Pool {
    /// Chooses the superblock to trust and loads its state (docs/format.md,
    /// sections 6 and 9). A slot whose HMAC fails is torn or forged and is
    /// passed over; a slot older than the trust anchor is refused. The
    /// newest authenticated slot is the state: if its checkpoint or log
    /// does not verify, open fails with that integrity error. An honest
    /// crash never needs an older slot then, since a superblock is written
    /// only after everything it names is durable, and nothing it names is
    /// reused before a newer superblock is; falling back would let the
    /// storage side roll the pool back by corrupting one block.
    func recover() throws(PoolError) {
        let slots = try readBlocks(PoolLayout.superblockSlots[0], count: PoolLayout.superblockSlots.count)
        var candidates: [Superblock] = []
        for index in 0..<PoolLayout.superblockSlots.count {
            let block = Array(slots[(index * Self.blockSize)..<((index + 1) * Self.blockSize)])
            guard let (superblock, authenticated, mac) = try? Superblock.decode(block),
                keys.verifyMAC(mac, for: authenticated), superblock.poolID == poolID,
                superblock.generation % UInt64(PoolLayout.superblockSlots.count) == UInt64(index)
            else { continue }
            candidates.append(superblock)
        }
        guard !candidates.isEmpty else { throw .noValidSuperblock }
        candidates.sort { $0.generation > $1.generation }
        let anchored = try anchor?.generation(pool: poolID)
        let newest = candidates[0]
        if let anchored, newest.generation < anchored {
            throw .rolledBack(pool: hex(poolID), found: newest.generation, anchor: anchored)
        }
        try load(newest)
        state.withLock { $0.anchorEpoch = newest.anchorEpoch }
        if anchored == nil || anchored! < newest.generation {
            try anchor?.record(pool: poolID, generation: newest.generation)
        }
    }

    /// Loads the checkpoint a superblock names and replays its log.
    private func load(_ superblock: Superblock) throws(PoolError) {
        let objectBytes = try openMetadata(superblock.checkpointRoot, kind: .poolObject, object: 0, level: 0, firstIndex: 0)
        let object: PoolObject
        do { object = try PoolObject(decoding: objectBytes) } catch { throw .malformed("pool object: \(error)") }
        guard object.blockCount == blockCount else {
            throw .malformed("pool object says \(object.blockCount) blocks, the header \(blockCount)")
        }
        guard Int(object.spaceMapDepth) == geometry.depth, let region = geometry.region(of: object.spaceMapRoot.block) else {
            throw .malformed("space map root at block \(object.spaceMapRoot.block) is not a region root")
        }

        // The space map: every bitmap block of the current region.
        var image = SpaceMapRegionImage(geometry: geometry)
        let tree = TreeIdentity(kind: .spaceMapNode, object: UInt32(region), depth: geometry.depth)
        var bitmaps = [[UInt8]](repeating: [], count: geometry.leafCount)
        var leafPointers = [BlockPointer?](repeating: nil, count: geometry.leafCount)
        try walkSpaceMap(object.spaceMapRoot, tree: tree, region: region, image: &image) { (index, pointer) throws(PoolError) in
            guard index < geometry.leafCount, pointer.block == geometry.leaf(Int(index), region: region) else {
                throw .malformed("space map leaf \(index) at unexpected block \(pointer.block)")
            }
            let bytes = try openMetadata(pointer, kind: .spaceMapBitmap, object: UInt32(region), level: 0, firstIndex: index)
            bitmaps[Int(index)] = bytes
            leafPointers[Int(index)] = pointer
        }
        for index in 0..<geometry.leafCount {
            image.leaves[index] = bitmaps[index]
            image.leafPointers[index] = leafPointers[index]
        }
        guard bitmaps.allSatisfy({ $0.count == Self.blockSize }) else { throw .malformed("space map is missing bitmap blocks") }
        var space = SpaceMap(blockCount: blockCount, bitmapBlocks: bitmaps)

        // The volume table.
        var volumes = VolumeStates()
        for (index, pointer) in object.volumeTable.enumerated() {
            let bytes = try openMetadata(pointer, kind: .volumeTable, object: 0, level: 0, firstIndex: UInt64(index))
            let table: VolumeTableBlock
            do { table = try VolumeTableBlock(decoding: bytes) } catch { throw .malformed("volume table: \(error)") }
            for record in table.volumes {
                guard record.id < object.nextVolumeID, volumes[record.id] == nil else {
                    throw .malformed("volume table: duplicate or unissued volume ID \(record.id)")
                }
                guard Int(record.depth) == treeDepth(units: record.size / UInt64(Self.blockSize)) else {
                    throw .malformed("volume \(record.name): depth \(record.depth) does not fit its size \(record.size)")
                }
                var keyBytes = record.key
                volumes.insert(
                    VolumeState(
                        id: record.id, name: record.name, size: record.size, depth: Int(record.depth), root: record.root,
                        key: VolumeKey(secret: .taking(&keyBytes))))
            }
        }

        // The log, newest first back to the checkpoint, replayed oldest first.
        var logBlocks: [(PhysicalBlock, LogBlock)] = []
        var pointer = superblock.logHead
        var sequence = superblock.logBlockCount
        while !pointer.isNull {
            guard sequence > 0 else { throw .malformed("log chain longer than the superblock's \(superblock.logBlockCount) blocks") }
            sequence -= 1
            let bytes = try openMetadata(pointer, kind: .log, object: 0, level: 0, firstIndex: sequence)
            let block: LogBlock
            do { block = try LogBlock(decoding: bytes) } catch { throw .malformed("log block \(sequence): \(error)") }
            guard block.sequence == sequence else { throw .malformed("log block \(sequence) says it is \(block.sequence)") }
            logBlocks.append((pointer.block, block))
            pointer = block.previous
        }
        guard sequence == 0 else { throw .malformed("log chain ends after \(superblock.logBlockCount - sequence) of \(superblock.logBlockCount) blocks") }
        var records: UInt64 = 0
        for (location, block) in logBlocks.reversed() {
            space.markUsed(location)
            for record in block.records {
                records += 1
                switch record {
                case .map(let volumeID, let logical, let target):
                    // No copy of the volume state may be held while its overlay changes.
                    guard let volumeBlocks = volumes[volumeID]?.blockCount, logical.rawValue < volumeBlocks else {
                        throw .malformed("log maps block \(logical) of volume \(volumeID), which does not exist")
                    }
                    guard target.block >= geometry.firstAllocatable, target.block < blockCount else {
                        throw .malformed("log maps to physical block \(target.block), outside the pool")
                    }
                    // In place: copying the volume state would copy its overlay per record.
                    let previous = volumes.update(volumeID) { $0.overlay.mapped.updateValue(target, forKey: logical.rawValue) }!
                    // A block written and rewritten within the log is free in this state.
                    if let previous, !previous.isNull, previous.block != target.block { space.release(previous.block) }
                    space.markUsed(target.block)
                case .unmap(let volumeID, let start, let count):
                    guard let volumeBlocks = volumes[volumeID]?.blockCount, count <= volumeBlocks, start.rawValue <= volumeBlocks - count else {
                        throw .malformed("log unmaps blocks \(start)+\(count) of volume \(volumeID), outside it")
                    }
                    let dropped = volumes.update(volumeID) { $0.overlay.unmap(start.rawValue..<(start.rawValue + count)) }!
                    for block in dropped { space.release(block) }
                }
            }
        }
        guard records == superblock.logRecordCount else {
            throw .malformed("log holds \(records) records, the superblock says \(superblock.logRecordCount)")
        }

        try state.withLock { (state) throws(PoolError) in
            state.generation = superblock.generation
            state.space = space
            state.volumes = volumes
            state.nextVolumeID = object.nextVolumeID
            state.logHead = superblock.logHead
            state.logBlocks = logBlocks.map(\.0).reversed()
            state.logRecordCount = records
            state.poolObject = superblock.checkpointRoot
            state.volumeTable = object.volumeTable
            state.spaceMapRegion = region
            state.regions[region] = image
            state.session = .generate()
            state.metadataCounter = 0
            state.dataCounters = [:]
        }
    }

    /// Visits the fixed-placement space map tree, checking every node lies
    /// where the geometry puts it, and records nodes in `image`.
    private func walkSpaceMap(
        _ root: BlockPointer, tree: TreeIdentity, region: Int, image: inout SpaceMapRegionImage,
        leaf: (UInt64, BlockPointer) throws(PoolError) -> Void
    ) throws(PoolError) {
        var nodes: [(BlockPointer, Int, UInt64)] = []
        try walk(
            root, tree: tree, level: tree.depth, firstIndex: 0,
            nodes: { pointer, level, first in nodes.append((pointer, level, first)) }, units: leaf)
        for (pointer, level, first) in nodes {
            let index = Int(first / (childSpan(level: level) * UInt64(PoolLayout.fanOut)))
            guard index < geometry.nodesPerLevel[level - 1], pointer.block == geometry.node(level: level, index: index, region: region) else {
                throw .malformed("space map node at level \(level) index \(index) at unexpected block \(pointer.block)")
            }
            image.nodePointers[level - 1][index] = pointer
            image.nodes[level - 1][index] = nodeCache.get(pointer)
        }
    }
}
