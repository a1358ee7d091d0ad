import BlockDevice
import Crypto
import Keys
import PoolFormat
import Synchronization
import Threads

/// Tunables of an open pool.
public struct PoolConfiguration: Sendable {
    /// Log records after which a commit also checkpoints the trees. Bounds
    /// the in-memory overlay (about 128 bytes per record) and open time.
    public var checkpointRecords: Int = 65_536
    /// Uncommitted records at which the commit timer commits at once rather
    /// than at the end of its interval: bounds them, the overlay and the
    /// buffers of the commit (and checkpoint) that writes them, however fast
    /// unflushed writes come.
    public var hurriedCommitRecords: Int = 65_536
    /// Decoded tree nodes kept in memory (about 6 KiB each).
    public var nodeCacheCapacity: Int = 8192
    /// Seconds after which uncommitted changes are committed without a
    /// FLUSH (docs/format.md, section 7); 0 disables the commit timer.
    public var commitInterval: Double = 5

    public init(
        checkpointRecords: Int = 65_536, nodeCacheCapacity: Int = 8192, commitInterval: Double = 5, hurriedCommitRecords: Int = 65_536
    ) {
        self.checkpointRecords = checkpointRecords
        self.hurriedCommitRecords = hurriedCommitRecords
        self.nodeCacheCapacity = nodeCacheCapacity
        self.commitInterval = commitInterval
    }
}

/// An open pool: the crypt domain's view of a raw device served by an
/// untrusted storage domain, holding encrypted, authenticated,
/// rollback-protected volumes (docs/format.md).
public final class Pool: Sendable {
    let storage: any BlockDevice
    /// The storage device, if it can start requests without blocking
    /// (Volume+Asynchronous.swift).
    let asynchronousStorage: (any AsynchronousBlockDevice)?
    let keys: PoolKeys
    let anchor: (any TrustAnchor)?
    public let poolID: [UInt8]
    public let blockCount: UInt64
    let geometry: SpaceMapGeometry
    let configuration: PoolConfiguration
    let state: Guarded<PoolState>
    /// Shared by every data operation; held exclusively by a checkpoint,
    /// which rewrites the trees that lookups walk.
    let gate = ReadWriteGate()
    /// Per-volume locks on logical block ranges: a read or a
    /// read-modify-write excludes writes to the same blocks.
    let ranges = RangeLocks()
    let commits = Guarded(CommitTickets())
    let nodeCache: NodeCache
    /// The master key, kept to seal new keyslots; locked memory.
    let master: MasterKey
    /// The keyslots of the newest header area and its update counter.
    let header: Guarded<HeaderImage>
    /// Commits uncommitted changes in the background; nil when disabled.
    let commitTimer: CommitTimer?
    /// Why the pool stopped serving, once storage lost acknowledged data
    /// writes (docs/format.md, section 7, "Storage restarts"); `failed`
    /// says whether it is set without taking the lock.
    let failure = Guarded<PoolError?>(nil)
    let failed = Atomic<Bool>(false)
    /// Checkpoints switched to since the pool opened: the age of a
    /// volume's remembered placements (`PlacementMemo`).
    let checkpoints = Atomic<UInt64>(0)

    struct HeaderImage {
        var slots: [KeyslotBlock]
        var updateCounter: UInt64
    }

    struct CommitTickets {
        var issued: UInt64 = 0
        var completed: UInt64 = 0
        var running = false
    }

    init(
        storage: any BlockDevice, master: MasterKey, keys: PoolKeys, anchor: (any TrustAnchor)?, blockCount: UInt64,
        configuration: PoolConfiguration, state: PoolState, header: HeaderImage
    ) {
        self.storage = storage
        self.asynchronousStorage = storage as? any AsynchronousBlockDevice
        self.master = master
        self.header = Guarded(header)
        self.keys = keys
        self.anchor = anchor
        self.poolID = keys.poolID
        self.blockCount = blockCount
        self.geometry = SpaceMapGeometry(blockCount: blockCount)
        self.configuration = configuration
        self.state = Guarded(state)
        self.nodeCache = NodeCache(capacity: configuration.nodeCacheCapacity)
        commitTimer = configuration.commitInterval > 0 ? CommitTimer(interval: configuration.commitInterval) : nil
    }

    deinit { commitTimer?.detach() }

    /// The newest committed generation.
    public var generation: UInt64 { state.withLock { $0.generation } }

    /// Free blocks (4 KiB each) the allocator can hand out now.
    public var freeBlocks: UInt64 { state.withLock { $0.space.freeCount } }
}

/// A volume's name, size and identity, as listed.
public struct VolumeInfo: Sendable, Equatable {
    public var id: VolumeID
    public var name: String
    public var size: UInt64
}

extension Pool {
    public var volumes: [VolumeInfo] {
        state.withLock { state in
            state.volumes.values.map { VolumeInfo(id: $0.id, name: $0.name, size: $0.size) }
        }
    }
}
