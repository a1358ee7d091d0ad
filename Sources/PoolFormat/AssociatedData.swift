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

/// The associated data of one seal (docs/format.md, section 5), held inline
/// (at most 64 bytes): a data block's is built per block written or read,
/// so it must not allocate.
public struct AssociatedBytes: Sendable {
    /// The bytes in memory order, zero past `count`.
    @usableFromInline var words: (UInt64, UInt64, UInt64, UInt64, UInt64, UInt64, UInt64, UInt64) = (0, 0, 0, 0, 0, 0, 0, 0)
    public let count: Int

    @inlinable init(count: Int, _ fill: (inout Filler) -> Void) {
        precondition(count <= 64)
        self.count = count
        // SAFETY: the tuple is 64 contiguous bytes; the filler writes only
        // below `count` (checked per field) and does not escape the call.
        Swift.withUnsafeMutableBytes(of: &words) { raw in
            var filler = Filler(raw: UnsafeMutableRawBufferPointer(rebasing: raw[0..<count]))
            fill(&filler)
        }
    }

    @inlinable public func withUnsafeBytes<R, E: Error>(_ body: (UnsafeRawBufferPointer) throws(E) -> R) throws(E) -> R {
        var copy = words
        let count = count
        // SAFETY: as in init; the pointer does not outlive the call.
        return try Swift.withUnsafeBytes(of: &copy) { (raw) throws(E) -> R in
            try body(UnsafeRawBufferPointer(rebasing: raw[0..<count]))
        }
    }

    /// The bytes as an array, for the array-based sealing calls.
    public var bytes: [UInt8] { withUnsafeBytes { Array($0) } }

    /// Writes the fields of the associated data at fixed offsets.
    @usableFromInline struct Filler {
        @usableFromInline let raw: UnsafeMutableRawBufferPointer

        @inlinable init(raw: UnsafeMutableRawBufferPointer) { self.raw = raw }

        @inlinable func put<T: FixedWidthInteger>(_ value: T, at offset: Int) {
            precondition(offset + MemoryLayout<T>.size <= raw.count)
            raw.storeBytes(of: value.littleEndian, toByteOffset: offset, as: T.self)
        }

        @inlinable func put(_ bytes: UnsafeRawBufferPointer, at offset: Int) {
            precondition(offset >= 0 && offset + bytes.count <= raw.count)
            UnsafeMutableRawBufferPointer(rebasing: raw[offset..<(offset + bytes.count)]).copyMemory(from: bytes)
        }

        @inlinable func put(_ bytes: [UInt8], at offset: Int) { bytes.withUnsafeBytes { put($0, at: offset) } }
    }
}

/// Associated data for sealing blocks (docs/format.md, section 5).
public enum AssociatedData {
    /// "BKD1" and "BKM1" as they are stored.
    @usableFromInline static let dataMagic: [UInt8] = Array("BKD1".utf8)
    @usableFromInline static let metadataMagic: [UInt8] = Array("BKM1".utf8)

    /// A data block: pool, volume, logical block, and the write's session salt and counter.
    @inlinable public static func data(
        pool: [UInt8], volume: VolumeID, block: LogicalBlock, salt: SessionSalt, counter: NonceCounter
    ) -> AssociatedBytes {
        precondition(pool.count == 16)
        return AssociatedBytes(count: 4 + 16 + 4 + 8 + 16 + 8) { writer in
            writer.put(dataMagic, at: 0)
            writer.put(pool, at: 4)
            writer.put(volume.rawValue, at: 20)
            writer.put(block.rawValue, at: 24)
            salt.withUnsafeBytes { writer.put($0, at: 32) }
            writer.put(counter.rawValue, at: 48)
        }
    }

    /// A metadata block: pool, kind, owning object, tree level, first index
    /// covered, and the write's session salt and counter.
    public static func metadata(
        pool: [UInt8], kind: MetadataKind, object: UInt32, level: UInt16, firstIndex: UInt64, salt: SessionSalt,
        counter: NonceCounter
    ) -> AssociatedBytes {
        precondition(pool.count == 16)
        return AssociatedBytes(count: 4 + 16 + 2 + 4 + 2 + 8 + 16 + 8) { writer in
            writer.put(metadataMagic, at: 0)
            writer.put(pool, at: 4)
            writer.put(kind.rawValue, at: 20)
            writer.put(object, at: 22)
            writer.put(level, at: 26)
            writer.put(firstIndex, at: 28)
            salt.withUnsafeBytes { writer.put($0, at: 36) }
            writer.put(counter.rawValue, at: 52)
        }
    }
}
