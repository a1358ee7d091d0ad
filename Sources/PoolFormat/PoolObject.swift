/// The root of a checkpoint (docs/format.md, section 8.1): where the space
/// map and the volume table are.
public struct PoolObject: Sendable, Hashable {
    public static let magicValue = magic("BULKPOOL")
    static let tableOffset = 256

    /// Pool size in blocks, repeated here so the checkpoint is self-describing.
    public var blockCount: UInt64
    /// Depth of the space map tree.
    public var spaceMapDepth: UInt16
    public var spaceMapRoot: BlockPointer
    /// Volume table blocks, in order; at most `PoolLayout.maxVolumeTableBlocks`.
    public var volumeTable: [BlockPointer]
    /// The next volume ID to hand out; IDs are never reused.
    public var nextVolumeID: VolumeID

    public init(
        blockCount: UInt64, spaceMapDepth: UInt16, spaceMapRoot: BlockPointer, volumeTable: [BlockPointer],
        nextVolumeID: VolumeID
    ) {
        precondition(volumeTable.count <= PoolLayout.maxVolumeTableBlocks)
        self.blockCount = blockCount
        self.spaceMapDepth = spaceMapDepth
        self.spaceMapRoot = spaceMapRoot
        self.volumeTable = volumeTable
        self.nextVolumeID = nextVolumeID
    }

    public func encoded() -> [UInt8] {
        var writer = ByteWriter(size: PoolLayout.blockSize)
        writer.put(Self.magicValue, at: 0)
        writer.put(PoolLayout.formatVersion, at: 8)
        writer.put(UInt16(volumeTable.count), at: 10)
        writer.put(nextVolumeID.rawValue, at: 12)
        writer.put(blockCount, at: 16)
        writer.put(spaceMapDepth, at: 24)
        spaceMapRoot.encode(into: &writer, at: 64)
        for (index, pointer) in volumeTable.enumerated() {
            pointer.encode(into: &writer, at: Self.tableOffset + index * PoolLayout.pointerSize)
        }
        return writer.bytes
    }

    public init(decoding block: [UInt8]) throws(FormatError) {
        let reader = try framedReader(block, structure: "pool object", magic: Self.magicValue)
        let tableCount = Int(reader.get(UInt16.self, at: 10))
        guard tableCount <= PoolLayout.maxVolumeTableBlocks else {
            throw .fieldOutOfRange(structure: "pool object", field: "volume table blocks", value: UInt64(tableCount))
        }
        let spaceMapDepth = reader.get(UInt16.self, at: 24)
        guard spaceMapDepth >= 1, spaceMapDepth <= PoolLayout.maxTreeDepth else {
            throw .fieldOutOfRange(structure: "pool object", field: "space map depth", value: UInt64(spaceMapDepth))
        }
        nextVolumeID = VolumeID(rawValue: reader.get(UInt32.self, at: 12))
        blockCount = reader.get(UInt64.self, at: 16)
        self.spaceMapDepth = spaceMapDepth
        spaceMapRoot = try BlockPointer(reader: reader, at: 64)
        var table: [BlockPointer] = []
        for index in 0..<tableCount {
            table.append(try BlockPointer(reader: reader, at: Self.tableOffset + index * PoolLayout.pointerSize))
        }
        volumeTable = table
    }
}
