/// Fixed geometry of a version 1 pool (docs/format.md, section 3).
public enum PoolLayout {
    /// Every block of the pool, data or metadata, is this many bytes.
    public static let blockSize = 4096
    /// The format version this code writes and the only one it reads.
    public static let formatVersion: UInt16 = 1
    /// Header area A: the header block and 15 keyslot blocks.
    public static let headerAreaA: PhysicalBlock = 0
    /// Header area B, an identical copy written before area A.
    public static let headerAreaB: PhysicalBlock = 16
    /// Blocks in one header area.
    public static let headerAreaBlocks = 16
    /// Keyslots per header area (one block each, after the header block).
    public static let keyslotCount = 15
    /// The four superblock slots; commit `g` writes slot `g % 4`.
    public static let superblockSlots: [PhysicalBlock] = [32, 33, 34, 35]
    /// The first block after the header areas and superblock slots, where
    /// the two space map regions begin (see `SpaceMapGeometry`).
    public static let spaceMapStart: PhysicalBlock = 36
    /// The smallest pool worth formatting: the fixed area plus room for a
    /// pool object, a volume table, a space map and some data.
    public static let minimumBlocks: UInt64 = 64
    /// Pointers per tree node: 64 pointers of 64 bytes fill one block.
    public static let fanOut = 64
    /// Bytes of a block pointer on disk.
    public static let pointerSize = 64
    /// Deepest tree: 64^6 leaves of 4 KiB cover 256 TiB per volume, and the
    /// bound lets a reader reject a corrupt depth before walking.
    public static let maxTreeDepth = 6
    /// Longest volume name, in UTF-8 bytes.
    public static let maxVolumeNameLength = 64
    /// Volume table entries per block.
    public static let volumesPerTableBlock = 16
    /// Volume table blocks the pool object can point to, so at most 512 volumes.
    public static let maxVolumeTableBlocks = 32
    /// Log records per log block (docs/format.md, section 7).
    public static let logRecordsPerBlock = 50
    /// Bits of space map per bitmap block.
    public static let blocksPerBitmapBlock = blockSize * 8
}

/// A physical block number on the pool device: the byte offset divided by
/// `PoolLayout.blockSize`. Zero is never a data location, so a pointer to
/// block 0 means "nothing written".
public typealias PhysicalBlock = UInt64

/// A volume's logical block number (the consumer's byte offset divided by 4096).
public struct LogicalBlock: RawRepresentable, Hashable, Comparable, Sendable, CustomStringConvertible {
    public var rawValue: UInt64
    public init(rawValue: UInt64) { self.rawValue = rawValue }
    public init(_ value: UInt64) { self.rawValue = value }
    public static func < (lhs: Self, rhs: Self) -> Bool { lhs.rawValue < rhs.rawValue }
    public var description: String { String(rawValue) }
}

/// A volume's identifier inside its pool; never reused within a pool.
public struct VolumeID: RawRepresentable, Hashable, Comparable, Sendable, CustomStringConvertible {
    public var rawValue: UInt32
    public init(rawValue: UInt32) { self.rawValue = rawValue }
    public static func < (lhs: Self, rhs: Self) -> Bool { lhs.rawValue < rhs.rawValue }
    public var description: String { String(rawValue) }
}

/// The per-key seal counter within a session; with 4 zero bytes it forms
/// the 96-bit AES-GCM nonce.
public struct NonceCounter: RawRepresentable, Hashable, Sendable {
    public var rawValue: UInt64
    public init(rawValue: UInt64) { self.rawValue = rawValue }
}

/// Where the space map lives (docs/format.md, section 8.3): two regions of
/// fixed position and size after the superblock slots, used alternately by
/// successive checkpoints, each holding the bitmap blocks followed by the
/// nodes of a radix tree over them, level by level. Fixed placement keeps
/// the space map out of its own allocation.
public struct SpaceMapGeometry: Sendable, Hashable {
    public let blockCount: UInt64
    /// Bitmap blocks: one bit per pool block.
    public let leafCount: Int
    /// Nodes per tree level, level 1 first; the last level has one node, the root.
    public let nodesPerLevel: [Int]

    public init(blockCount: UInt64) {
        self.blockCount = blockCount
        let perLeaf = UInt64(PoolLayout.blocksPerBitmapBlock)
        leafCount = Int((blockCount + perLeaf - 1) / perLeaf)
        var levels: [Int] = []
        var count = leafCount
        repeat {
            count = (count + PoolLayout.fanOut - 1) / PoolLayout.fanOut
            levels.append(count)
        } while count > 1
        nodesPerLevel = levels
    }

    /// Tree depth: the root's level.
    public var depth: Int { nodesPerLevel.count }

    /// Blocks in one region.
    public var regionSize: UInt64 { UInt64(leafCount + nodesPerLevel.reduce(0, +)) }

    /// The first block of region 0 or 1.
    public func regionStart(_ region: Int) -> PhysicalBlock {
        PoolLayout.spaceMapStart + UInt64(region) * regionSize
    }

    /// The first block the allocator may hand out.
    public var firstAllocatable: PhysicalBlock { PoolLayout.spaceMapStart + 2 * regionSize }

    /// Where bitmap block `index` of a region lives.
    public func leaf(_ index: Int, region: Int) -> PhysicalBlock {
        regionStart(region) + UInt64(index)
    }

    /// Where node `index` of tree level `level` (1-based) of a region lives.
    public func node(level: Int, index: Int, region: Int) -> PhysicalBlock {
        regionStart(region) + UInt64(leafCount + nodesPerLevel.prefix(level - 1).reduce(0, +) + index)
    }

    /// Which region a root pointer lies in.
    public func region(of block: PhysicalBlock) -> Int? {
        for region in 0..<2 where block >= regionStart(region) && block < regionStart(region) + regionSize { return region }
        return nil
    }
}
