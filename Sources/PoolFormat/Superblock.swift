/// One of the four rotating commit records (docs/format.md, section 6). The
/// HMAC over it is computed and checked by the caller, which holds the key;
/// this type only lays out the bytes it covers.
public struct Superblock: Sendable, Hashable {
    public static let magicValue = magic("BULKSUP1")
    /// Bytes covered by the HMAC; the 32-byte HMAC follows them.
    public static let authenticatedLength = 192

    public var poolID: [UInt8]
    public var generation: UInt64
    public var anchorEpoch: UInt64
    public var checkpointRoot: BlockPointer
    public var logHead: BlockPointer
    public var logRecordCount: UInt64
    /// Log blocks in the chain; the newest has sequence `logBlockCount - 1`.
    public var logBlockCount: UInt64

    public init(
        poolID: [UInt8], generation: UInt64, anchorEpoch: UInt64, checkpointRoot: BlockPointer, logHead: BlockPointer,
        logRecordCount: UInt64, logBlockCount: UInt64
    ) {
        precondition(poolID.count == 16)
        self.poolID = poolID
        self.generation = generation
        self.anchorEpoch = anchorEpoch
        self.checkpointRoot = checkpointRoot
        self.logHead = logHead
        self.logRecordCount = logRecordCount
        self.logBlockCount = logBlockCount
    }

    /// The authenticated bytes, without the HMAC.
    public func authenticatedBytes() -> [UInt8] {
        var writer = ByteWriter(size: Self.authenticatedLength)
        writer.put(Self.magicValue, at: 0)
        writer.put(PoolLayout.formatVersion, at: 8)
        writer.put(poolID, at: 16)
        writer.put(generation, at: 32)
        writer.put(anchorEpoch, at: 40)
        checkpointRoot.encode(into: &writer, at: 48)
        logHead.encode(into: &writer, at: 112)
        writer.put(logRecordCount, at: 176)
        writer.put(logBlockCount, at: 184)
        return writer.bytes
    }

    /// The whole block: authenticated bytes, HMAC, zero padding.
    public func block(mac: [UInt8]) -> [UInt8] {
        precondition(mac.count == 32)
        var writer = ByteWriter(size: PoolLayout.blockSize)
        writer.put(authenticatedBytes(), at: 0)
        writer.put(mac, at: Self.authenticatedLength)
        return writer.bytes
    }

    /// Splits a slot into the decoded superblock, the bytes its HMAC covers
    /// and the stored HMAC. The caller must verify the HMAC before trusting
    /// any field.
    public static func decode(_ block: [UInt8]) throws(FormatError) -> (Superblock, authenticated: [UInt8], mac: [UInt8]) {
        let reader = try framedReader(block, structure: "superblock", magic: magicValue)
        let superblock = Superblock(
            poolID: reader.slice(16, 16), generation: reader.get(UInt64.self, at: 32),
            anchorEpoch: reader.get(UInt64.self, at: 40),
            checkpointRoot: try BlockPointer(reader: reader, at: 48), logHead: try BlockPointer(reader: reader, at: 112),
            logRecordCount: reader.get(UInt64.self, at: 176),
            logBlockCount: reader.get(UInt64.self, at: 184))
        return (superblock, reader.slice(0, authenticatedLength), reader.slice(authenticatedLength, 32))
    }
}
