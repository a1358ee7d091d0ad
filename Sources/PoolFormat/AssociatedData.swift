/// What a metadata block is, bound into its associated data so a block of
/// one kind can never stand in for another.
public enum MetadataKind: UInt16, Sendable, Hashable, CustomStringConvertible {
    case poolObject = 1
    case volumeTable = 2
    case volumeTreeNode = 3
    case spaceMapNode = 4
    case spaceMapBitmap = 5
    case log = 6

    public var description: String {
        switch self {
        case .poolObject: "pool object"
        case .volumeTable: "volume table"
        case .volumeTreeNode: "volume tree node"
        case .spaceMapNode: "space map node"
        case .spaceMapBitmap: "space map bitmap"
        case .log: "log block"
        }
    }
}

/// Associated data for sealing blocks (docs/format.md, section 5).
public enum AssociatedData {
    /// A data block: pool, volume, logical block, and the write's session salt and counter.
    public static func data(
        pool: [UInt8], volume: VolumeID, block: LogicalBlock, salt: SessionSalt, counter: NonceCounter
    ) -> [UInt8] {
        var writer = ByteWriter(size: 4 + 16 + 4 + 8 + 16 + 8)
        writer.put(Array("BKD1".utf8), at: 0)
        writer.put(pool, at: 4)
        writer.put(volume.rawValue, at: 20)
        writer.put(block.rawValue, at: 24)
        writer.put(salt.bytes, at: 32)
        writer.put(counter.rawValue, at: 48)
        return writer.bytes
    }

    /// A metadata block: pool, kind, owning object, tree level, first index
    /// covered, and the write's session salt and counter.
    public static func metadata(
        pool: [UInt8], kind: MetadataKind, object: UInt32, level: UInt16, firstIndex: UInt64, salt: SessionSalt,
        counter: NonceCounter
    ) -> [UInt8] {
        var writer = ByteWriter(size: 4 + 16 + 2 + 4 + 2 + 8 + 16 + 8)
        writer.put(Array("BKM1".utf8), at: 0)
        writer.put(pool, at: 4)
        writer.put(kind.rawValue, at: 20)
        writer.put(object, at: 22)
        writer.put(level, at: 26)
        writer.put(firstIndex, at: 28)
        writer.put(salt.bytes, at: 36)
        writer.put(counter.rawValue, at: 52)
        return writer.bytes
    }
}
