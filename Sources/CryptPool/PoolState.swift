import Keys
import PoolFormat

/// Changes to a volume's mapping since the last checkpoint: the in-memory
/// image of the log (docs/format.md, section 7).
struct Overlay: Sendable {
    /// Logical blocks written since the checkpoint. Wins over `unmapped`:
    /// an unmap removes the entries it covers, so any entry here is newer.
    var mapped: [UInt64: BlockPointer] = [:]
    /// Sorted, disjoint ranges unmapped since the checkpoint.
    var unmapped: [Range<UInt64>] = []

    var isEmpty: Bool { mapped.isEmpty && unmapped.isEmpty }

    /// Empties the overlay but keeps the dictionary's storage for the
    /// records to come. Storage it shares is left alone: it is empty already
    /// (a volume's overlay as the checkpoint's copy of the state had it).
    mutating func removeAllKeepingCapacity() {
        if !mapped.isEmpty { mapped.removeAll(keepingCapacity: true) }
        unmapped = []
    }

    /// The pointer for a block if the overlay decides it; nil defers to the tree.
    func lookup(_ block: UInt64) -> BlockPointer? {
        // Checked first: hashing the key cost reads 1.5% of the crypt
        // domain's time on a volume not written since its checkpoint.
        if !mapped.isEmpty, let pointer = mapped[block] { return pointer }
        return isUnmapped(block) ? .null : nil
    }

    func isUnmapped(_ block: UInt64) -> Bool {
        var low = 0
        var high = unmapped.count
        while low < high {
            let middle = (low + high) / 2
            if unmapped[middle].upperBound <= block { low = middle + 1 } else { high = middle }
        }
        return low < unmapped.count && unmapped[low].contains(block)
    }

    /// Maps consecutive logical blocks from `first` to `pointers`, in order;
    /// appends the physical blocks of non-null entries they replace to `replaced`.
    mutating func map(from first: UInt64, to pointers: [BlockPointer], replaced: inout [PhysicalBlock]) {
        for (offset, pointer) in pointers.enumerated() {
            if let previous = mapped.updateValue(pointer, forKey: first + UInt64(offset)), !previous.isNull {
                replaced.append(previous.block)
            }
        }
    }

    /// Unmaps a range; returns the physical blocks of overlay entries it drops.
    mutating func unmap(_ range: Range<UInt64>) -> [PhysicalBlock] {
        var dropped: [PhysicalBlock] = []
        if UInt64(range.count) < UInt64(mapped.count) {
            for block in range {
                if let pointer = mapped.removeValue(forKey: block), !pointer.isNull { dropped.append(pointer.block) }
            }
        } else {
            for (block, pointer) in mapped where range.contains(block) {
                mapped[block] = nil
                if !pointer.isNull { dropped.append(pointer.block) }
            }
        }
        var merged = range
        var kept: [Range<UInt64>] = []
        for existing in unmapped {
            if existing.upperBound < merged.lowerBound || existing.lowerBound > merged.upperBound {
                kept.append(existing)
            } else {
                merged = min(existing.lowerBound, merged.lowerBound)..<max(existing.upperBound, merged.upperBound)
            }
        }
        kept.append(merged)
        kept.sort { $0.lowerBound < $1.lowerBound }
        unmapped = kept
        return dropped
    }
}

/// What the pool knows about one volume.
struct VolumeState: Sendable {
    var id: VolumeID
    var name: String
    var size: UInt64
    var depth: Int
    /// Root of the checkpointed tree.
    var root: BlockPointer
    var key: VolumeKey
    /// Changes since the checkpoint (or, while one runs, since it began).
    var overlay = Overlay()
    /// The changes a running checkpoint is folding into the tree: written
    /// before it began, so `overlay` wins over them. Empty otherwise; its
    /// storage, emptied, waits to become the next checkpoint's `overlay`.
    var folding = Overlay()

    var blockCount: UInt64 { size / UInt64(PoolLayout.blockSize) }

    /// The pointer for a block if the overlays decide it; nil defers to the tree.
    func decided(_ block: UInt64) -> BlockPointer? {
        if let pointer = overlay.lookup(block) { return pointer }
        return folding.isEmpty ? nil : folding.lookup(block)
    }

    /// Whether a checkpoint has anything of this volume to fold.
    var hasChanges: Bool { !overlay.isEmpty || !folding.isEmpty }

    /// Begins a checkpoint: the changes so far become `folding`, and
    /// `overlay` starts empty (in the storage the last checkpoint folded).
    mutating func freeze() {
        precondition(folding.isEmpty, "a checkpoint is already folding this volume")
        swap(&overlay, &folding)
    }

    /// Puts back the changes of a checkpoint that failed before its switch
    /// under those written since, as one overlay; appends the physical
    /// blocks of folded entries the newer ones replace or unmap to
    /// `replaced` (free once the next commit is durable, as an overwrite
    /// of an overlay entry would have made them).
    mutating func unfreeze(replaced: inout [PhysicalBlock]) {
        var merged = folding
        for range in overlay.unmapped { replaced += merged.unmap(range) }
        for (block, pointer) in overlay.mapped {
            if let previous = merged.mapped.updateValue(pointer, forKey: block), !previous.isNull { replaced.append(previous.block) }
        }
        overlay = merged
        folding = Overlay()
    }
}

/// The checkpointed space map region, as last written, so the next
/// checkpoint into the same region rewrites only what changed.
struct SpaceMapRegionImage: Sendable {
    var leaves: [[UInt8]?]
    var leafPointers: [BlockPointer?]
    /// Node pointers per level (1-based levels at index level - 1).
    var nodes: [[TreeNode?]]
    var nodePointers: [[BlockPointer?]]

    init(geometry: SpaceMapGeometry) {
        leaves = Array(repeating: nil, count: geometry.leafCount)
        leafPointers = Array(repeating: nil, count: geometry.leafCount)
        nodes = geometry.nodesPerLevel.map { Array(repeating: nil, count: $0) }
        nodePointers = geometry.nodesPerLevel.map { Array(repeating: nil, count: $0) }
    }
}

/// Everything about the pool that changes, guarded by one lock.
struct PoolState: Sendable {
    var generation: UInt64
    /// The anchor epoch new superblocks carry (docs/format.md, section 9).
    var anchorEpoch: UInt64 = 0
    var space: SpaceMap
    /// The salt of this session; new at every open and rollover.
    var session: SessionSalt
    var metadataCounter: UInt64 = 0
    var dataCounters: [VolumeID: UInt64] = [:]
    var metadataSealers: [SessionSalt: BlockSealer] = [:]
    var dataSealers: [VolumeSessionKey: BlockSealer] = [:]
    var volumes: VolumeStates
    var nextVolumeID: VolumeID
    /// Records written since the last commit, in order.
    var pending: [LogRecord] = []
    /// The storage session epoch sampled before the oldest data write whose
    /// record is pending; nil when none is.
    var pendingEpoch: UInt64?
    /// Blocks freed since the last commit; allocatable once it is durable.
    var releaseAfterCommit: [PhysicalBlock] = []
    // The log since the checkpoint.
    var logHead: BlockPointer = .null
    var logBlocks: [PhysicalBlock] = []
    var logRecordCount: UInt64 = 0
    // The checkpoint.
    var poolObject: BlockPointer
    var volumeTable: [BlockPointer]
    var spaceMapRegion: Int
    var regions: [SpaceMapRegionImage]
    /// The newest superblock while its write, flush or anchor record has not
    /// succeeded: the state has moved on to it, but the storage may still
    /// hold only the previous one. Written again before the next commit
    /// reports success and before the next checkpoint.
    var unsyncedSuperblock: Superblock?
    /// A checkpoint is folding the volumes' `folding` overlays beside
    /// reads and writes (Checkpoint.swift).
    var checkpointFolding = false
}

extension PoolState {
    /// Notes that pending records name data written from storage epoch `epoch` on.
    mutating func notePendingWrites(since epoch: UInt64?) {
        guard let epoch else { return }
        pendingEpoch = min(pendingEpoch ?? epoch, epoch)
    }
}

extension PoolState {
    /// Records data blocks just written to storage: logical blocks from
    /// `first` of `volume` now live at `pointers`, in order. Maps them in the
    /// overlay in place (a copy of the volume state would copy its whole
    /// overlay), queues their log records and the blocks they replace for
    /// release after the commit. False if the volume is gone.
    mutating func noteWrites(volume: VolumeID, from first: UInt64, pointers: [BlockPointer], since epoch: UInt64?) -> Bool {
        // One lookup, in place: checking first copied the volume state. The
        // release list is moved out for the call (and back): the closure may
        // not reach into `self` while `volumes` is being changed.
        var replaced: [PhysicalBlock] = []
        swap(&replaced, &releaseAfterCommit)
        let found = volumes.update(volume) { $0.overlay.map(from: first, to: pointers, replaced: &replaced) } != nil
        swap(&replaced, &releaseAfterCommit)
        guard found else { return false }
        notePendingWrites(since: epoch)
        for (offset, pointer) in pointers.enumerated() {
            pending.append(.map(volume: volume, block: LogicalBlock(first + UInt64(offset)), pointer: pointer))
        }
        return true
    }
}

extension PoolState {
    /// Switches to the volumes a checkpoint wrote (those a volume create or
    /// delete left, with new roots), whose `folding` overlays it folded into
    /// the trees; `overlay` keeps what was written meanwhile. Each volume
    /// keeps the folded dictionary's storage, emptied, largest first, while
    /// the storage kept adds up to at most `overlayCapacity` entries, and
    /// starts with none past that; a volume written nothing meanwhile gets
    /// it back as its `overlay`. Grown again from nothing, a dictionary
    /// doubles through a fresh allocation per step (each populated, under
    /// the crypt domain's mlockall): 1-2% of cryptd under sustained writes.
    /// The checkpoint bounds the entries all overlays hold together to
    /// about its record bound, and one that grew by doubling to `n` entries
    /// has storage for fewer than `2n`. The checkpoint's copies must hold
    /// no overlay, so that emptying them here copies nothing.
    mutating func adoptCheckpointed(_ checkpointed: VolumeStates, overlayCapacity: Int) {
        var previous = volumes
        volumes = checkpointed
        let largestFirst = volumes.ids.sorted {
            (previous[$0]?.folding.mapped.capacity ?? 0) > (previous[$1]?.folding.mapped.capacity ?? 0)
        }
        var remaining = overlayCapacity
        for id in largestFirst {
            // Moved out, so that each is the only reference to its storage.
            var written = Overlay()
            var folded = Overlay()
            if var old = previous.remove(id) {
                swap(&written, &old.overlay)
                swap(&folded, &old.folding)
            }
            let capacity = folded.mapped.capacity
            if capacity <= remaining {
                remaining -= capacity
                folded.removeAllKeepingCapacity()
            } else {
                folded = Overlay()
            }
            if written.isEmpty, written.mapped.capacity < folded.mapped.capacity { swap(&written, &folded) }
            volumes.update(id) { volume in
                volume.overlay = written
                volume.folding = folded
            }
        }
    }
}

struct VolumeSessionKey: Hashable, Sendable {
    var volume: VolumeID
    var salt: SessionSalt
}

/// Seals per key before a session rolls over: 2^32 seals of 4 KiB keep
/// AES-GCM's advantage near 2^-49 (docs/format.md, section 4).
let maxSealsPerSessionKey: UInt64 = 1 << 32
