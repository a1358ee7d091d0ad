/// A volume as recorded in the volume table (docs/format.md, section 8.1).
public struct VolumeRecord: Sendable, Hashable {
    public var id: VolumeID
    public var name: String
    /// Size in bytes, a multiple of the block size.
    public var size: UInt64
    /// Depth of the volume's tree; 0 means the root points at the single data block.
    public var depth: UInt16
    public var root: BlockPointer
    /// The volume's 32-byte data key. The table block is sealed under the
    /// metadata key, which derives from the master key: that sealing is the
    /// wrapping, and dropping the entry is the cryptographic erase.
    public var key: [UInt8]

    public init(id: VolumeID, name: String, size: UInt64, depth: UInt16, root: BlockPointer, key: [UInt8]) {
        precondition(key.count == 32)
        self.id = id
        self.name = name
        self.size = size
        self.depth = depth
        self.root = root
        self.key = key
    }

    static let size = 256
}

/// A block of the volume table: up to 16 volume records. Slot IDs of 0 are empty.
public struct VolumeTableBlock: Sendable, Hashable {
    public var volumes: [VolumeRecord]

    public init(volumes: [VolumeRecord]) {
        precondition(volumes.count <= PoolLayout.volumesPerTableBlock)
        self.volumes = volumes
    }

    public func encoded() -> [UInt8] {
        var writer = ByteWriter(size: PoolLayout.blockSize)
        for (index, volume) in volumes.enumerated() {
            let offset = index * VolumeRecord.size
            let name = Array(volume.name.utf8.prefix(PoolLayout.maxVolumeNameLength))
            writer.put(volume.id.rawValue, at: offset)
            writer.put(volume.size, at: offset + 8)
            writer.put(volume.depth, at: offset + 16)
            writer.put(UInt16(name.count), at: offset + 18)
            writer.put(name, at: offset + 24)
            volume.root.encode(into: &writer, at: offset + 88)
            writer.put(volume.key, at: offset + 152)
        }
        return writer.bytes
    }

    public init(decoding block: [UInt8]) throws(FormatError) {
        guard block.count == PoolLayout.blockSize else {
            throw .wrongSize(structure: "volume table", expected: PoolLayout.blockSize, found: block.count)
        }
        let reader = ByteReader(bytes: block)
        var volumes: [VolumeRecord] = []
        for index in 0..<PoolLayout.volumesPerTableBlock {
            let offset = index * VolumeRecord.size
            let id = reader.get(UInt32.self, at: offset)
            guard id != 0 else { continue }
            let size = reader.get(UInt64.self, at: offset + 8)
            let depth = reader.get(UInt16.self, at: offset + 16)
            let nameLength = Int(reader.get(UInt16.self, at: offset + 18))
            guard nameLength <= PoolLayout.maxVolumeNameLength else {
                throw .fieldOutOfRange(structure: "volume table", field: "name length", value: UInt64(nameLength))
            }
            guard depth <= PoolLayout.maxTreeDepth else {
                throw .fieldOutOfRange(structure: "volume table", field: "depth", value: UInt64(depth))
            }
            guard size % UInt64(PoolLayout.blockSize) == 0 else {
                throw .fieldOutOfRange(structure: "volume table", field: "size", value: size)
            }
            // Decoding with replacement characters would change the name
            // the next time the table is written.
            guard let name = String(validating: reader.slice(offset + 24, nameLength), as: UTF8.self) else {
                throw .fieldOutOfRange(structure: "volume table", field: "name that is not UTF-8, length", value: UInt64(nameLength))
            }
            volumes.append(
                VolumeRecord(
                    id: VolumeID(rawValue: id), name: name,
                    size: size, depth: depth, root: try BlockPointer(reader: reader, at: offset + 88),
                    key: reader.slice(offset + 152, 32)))
        }
        self.volumes = volumes
    }
}
