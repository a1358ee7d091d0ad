import Keys
import PoolFormat

extension Pool {
    /// Largest volume: a tree of the maximum depth covers 64^6 blocks of 4 KiB.
    public static let maxVolumeSize: UInt64 = (1 << 36) * UInt64(PoolLayout.blockSize)

    /// Creates a thin volume (bulkhead volume create): a new random key, an
    /// empty tree; it reads as zeroes until written. Committed before returning.
    @discardableResult
    public func createVolume(name: String, size: UInt64) throws(PoolError) -> VolumeInfo {
        guard !name.isEmpty, name.utf8.count <= PoolLayout.maxVolumeNameLength,
            name.allSatisfy({ $0.isASCII && ($0.isLetter || $0.isNumber || "-_.".contains($0)) })
        else {
            throw .invalidArgument(
                "volume name \"\(name)\": use 1 to \(PoolLayout.maxVolumeNameLength) letters, digits, '-', '_' or '.'")
        }
        guard size > 0, size % UInt64(PoolLayout.blockSize) == 0, size <= Self.maxVolumeSize else {
            throw .invalidArgument("volume size \(size): must be a positive multiple of 4096 up to \(Self.maxVolumeSize)")
        }
        var created: VolumeInfo?
        try exclusiveCommit { (volumes, _) throws(PoolError) in
            guard !volumes.values.contains(where: { $0.name == name }) else { throw .volumeExists(name) }
            guard volumes.count < PoolLayout.maxVolumeTableBlocks * PoolLayout.volumesPerTableBlock else { throw .tooManyVolumes }
            let id = state.withLock { state -> VolumeID in
                let id = state.nextVolumeID
                state.nextVolumeID = VolumeID(rawValue: id.rawValue + 1)
                return id
            }
            volumes.insert(
                VolumeState(
                    id: id, name: name, size: size, depth: treeDepth(units: size / UInt64(PoolLayout.blockSize)), root: .null,
                    key: .generate()))
            created = VolumeInfo(id: id, name: name, size: size)
        }
        return created!
    }

    /// Deletes a volume (bulkhead volume delete): its key leaves the volume
    /// table and its blocks are freed. Committed before returning.
    public func deleteVolume(name: String) throws(PoolError) {
        try exclusiveCommit { (volumes, releases) throws(PoolError) in
            guard let volume = volumes.values.first(where: { $0.name == name }) else { throw .noSuchVolume(name) }
            let tree = TreeIdentity(kind: .volumeTreeNode, object: volume.id.rawValue, depth: volume.depth, volumeName: volume.name)
            try walk(
                volume.root, tree: tree, level: volume.depth, firstIndex: 0,
                nodes: { pointer, _, _ in releases.append(pointer.block) },
                units: { _, unit in releases.append(unit.block) })
            volumes.remove(volume.id)
            state.withLock { state in
                state.pending.removeAll { record in
                    switch record {
                    case .map(let id, _, _), .unmap(let id, _, _): id == volume.id
                    }
                }
                state.dataSealers = state.dataSealers.filter { $0.key.volume != volume.id }
            }
        }
    }

    /// Runs a change to the volume table as a checkpoint, serialised with
    /// commits and excluding all I/O.
    func exclusiveCommit(
        _ change: (inout VolumeStates, inout [PhysicalBlock]) throws(PoolError) -> Void
    ) throws(PoolError) {
        try serialisedCommit { () throws(PoolError) in
            try gate.withExclusive { () throws(PoolError) in try checkpoint(volumeTableChange: change) }
        }
    }

    /// Runs `body` (a commit or checkpoint) as the only one running; once it
    /// succeeds, every FLUSH issued before it started counts as done.
    func serialisedCommit<T>(_ body: () throws(PoolError) -> T) throws(PoolError) -> T {
        let covering = commits.wait(until: { !$0.running }) { tickets -> UInt64 in
            tickets.running = true
            return tickets.issued
        }!
        defer { commits.update { $0.running = false } }
        let result = try body()
        commits.update { $0.completed = max($0.completed, covering) }
        return result
    }

    /// Opens the volume named `name` for I/O.
    public func volume(named name: String) throws(PoolError) -> Volume {
        guard let info = volumes.first(where: { $0.name == name }) else { throw .noSuchVolume(name) }
        return Volume(pool: self, info: info)
    }
}

extension Pool {
    /// Stops the commit timer, then commits everything (a clean close).
    /// The log stays as it is unless it reached its bound, so the next open
    /// replays at most `checkpointRecords` records, as after a crash.
    public func close() throws(PoolError) {
        commitTimer?.stop()
        try commitEverything(newSuperblock: false)
    }
}
