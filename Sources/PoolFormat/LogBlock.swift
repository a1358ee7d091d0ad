/// One pointer update since the last checkpoint (docs/format.md, section 7).
public enum LogRecord: Sendable, Hashable {
    /// Logical block `block` of `volume` now lives at `pointer`.
    case map(volume: VolumeID, block: LogicalBlock, pointer: BlockPointer)
    /// `count` logical blocks from `start` are unwritten again (TRIM, WRITE_ZEROES).
    case unmap(volume: VolumeID, start: LogicalBlock, count: UInt64)

    static let size = 80
    static let mapType: UInt16 = 1
    static let unmapType: UInt16 = 2

    func encode(into writer: inout ByteWriter, at offset: Int) {
        switch self {
        case .map(let volume, let block, let pointer):
            writer.put(Self.mapType, at: offset)
            writer.put(volume.rawValue, at: offset + 4)
            writer.put(block.rawValue, at: offset + 8)
            pointer.encode(into: &writer, at: offset + 16)
        case .unmap(let volume, let start, let count):
            writer.put(Self.unmapType, at: offset)
            writer.put(volume.rawValue, at: offset + 4)
            writer.put(start.rawValue, at: offset + 8)
            writer.put(count, at: offset + 16)
        }
    }

    init(reader: ByteReader, at offset: Int) throws(FormatError) {
        let type = reader.get(UInt16.self, at: offset)
        guard reader.get(UInt16.self, at: offset + 2) == 0 else { throw .nonZeroReserved(structure: "log record", offset: offset + 2) }
        let id = reader.get(UInt32.self, at: offset + 4)
        func requireZero(from start: Int) throws(FormatError) {
            for index in (offset + start)..<(offset + Self.size) where reader.bytes[index] != 0 {
                throw .nonZeroReserved(structure: "log record", offset: index)
            }
        }
        switch type {
        case Self.mapType:
            self = .map(
                volume: VolumeID(rawValue: id), block: LogicalBlock(reader.get(UInt64.self, at: offset + 8)),
                pointer: try BlockPointer(reader: reader, at: offset + 16))
        case Self.unmapType:
            let count = reader.get(UInt64.self, at: offset + 16)
            guard count > 0 else { throw .fieldOutOfRange(structure: "log record", field: "unmap count", value: 0) }
            try requireZero(from: 24)
            self = .unmap(volume: VolumeID(rawValue: id), start: LogicalBlock(reader.get(UInt64.self, at: offset + 8)), count: count)
        default:
            throw .fieldOutOfRange(structure: "log record", field: "type", value: UInt64(type))
        }
    }
}

/// A block of the metadata log: a header, the pointer to the previous log
/// block (null for the first after a checkpoint) and up to 50 records.
public struct LogBlock: Sendable, Hashable {
    public static let magicValue = magic("BULKLOG1")
    static let previousOffset = 32
    static let recordsOffset = 96

    /// Position of this block in the chain since the checkpoint, from 0.
    public var sequence: UInt64
    public var previous: BlockPointer
    public var records: [LogRecord]

    public init(sequence: UInt64, previous: BlockPointer, records: [LogRecord]) {
        precondition(!records.isEmpty && records.count <= PoolLayout.logRecordsPerBlock)
        self.sequence = sequence
        self.previous = previous
        self.records = records
    }

    public func encoded() -> [UInt8] {
        var writer = ByteWriter(size: PoolLayout.blockSize)
        writer.put(Self.magicValue, at: 0)
        writer.put(PoolLayout.formatVersion, at: 8)
        writer.put(UInt16(records.count), at: 10)
        writer.put(sequence, at: 16)
        previous.encode(into: &writer, at: Self.previousOffset)
        for (index, record) in records.enumerated() {
            record.encode(into: &writer, at: Self.recordsOffset + index * LogRecord.size)
        }
        return writer.bytes
    }

    public init(decoding block: [UInt8]) throws(FormatError) {
        let reader = try framedReader(block, structure: "log block", magic: Self.magicValue)
        let count = Int(reader.get(UInt16.self, at: 10))
        guard count >= 1, count <= PoolLayout.logRecordsPerBlock else {
            throw .fieldOutOfRange(structure: "log block", field: "record count", value: UInt64(count))
        }
        sequence = reader.get(UInt64.self, at: 16)
        previous = try BlockPointer(reader: reader, at: Self.previousOffset)
        var records: [LogRecord] = []
        for index in 0..<count {
            records.append(try LogRecord(reader: reader, at: Self.recordsOffset + index * LogRecord.size))
        }
        self.records = records
    }
}
