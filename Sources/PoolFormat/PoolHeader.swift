/// The header block at the start of each header area (docs/format.md,
/// section 3.1). Plaintext, so the keyslots can be found before unlock;
/// authenticated after unlock by an HMAC under a key derived from the
/// master key, which the caller computes and checks.
public struct PoolHeader: Sendable, Hashable {
    public static let magicValue = magic("BULKHDR1")
    /// Bytes covered by the HMAC; the 32-byte HMAC follows them.
    public static let authenticatedLength = 528

    public var poolID: [UInt8]
    public var blockCount: UInt64
    /// Incremented on every keyslot change; the area with the higher value is newer.
    public var updateCounter: UInt64
    /// SHA-256 of each keyslot block, zeroes for an empty slot.
    public var keyslotDigests: [[UInt8]]

    public init(poolID: [UInt8], blockCount: UInt64, updateCounter: UInt64, keyslotDigests: [[UInt8]]) {
        precondition(poolID.count == 16 && keyslotDigests.count == PoolLayout.keyslotCount)
        self.poolID = poolID
        self.blockCount = blockCount
        self.updateCounter = updateCounter
        self.keyslotDigests = keyslotDigests
    }

    public func authenticatedBytes() -> [UInt8] {
        var writer = ByteWriter(size: Self.authenticatedLength)
        writer.put(Self.magicValue, at: 0)
        writer.put(PoolLayout.formatVersion, at: 8)
        writer.put(UInt32(PoolLayout.blockSize), at: 12)
        writer.put(poolID, at: 16)
        writer.put(blockCount, at: 32)
        writer.put(updateCounter, at: 40)
        for (index, digest) in keyslotDigests.enumerated() { writer.put(digest, at: 48 + 32 * index) }
        return writer.bytes
    }

    public func block(mac: [UInt8]) -> [UInt8] {
        precondition(mac.count == 32)
        var writer = ByteWriter(size: PoolLayout.blockSize)
        writer.put(authenticatedBytes(), at: 0)
        writer.put(mac, at: Self.authenticatedLength)
        return writer.bytes
    }

    /// Decodes a header block; the caller verifies the returned HMAC over
    /// the returned bytes once it holds the master key.
    public static func decode(_ block: [UInt8]) throws(FormatError) -> (PoolHeader, authenticated: [UInt8], mac: [UInt8]) {
        let reader = try framedReader(block, structure: "pool header", magic: magicValue)
        let blockSize = reader.get(UInt32.self, at: 12)
        guard blockSize == PoolLayout.blockSize else {
            throw .fieldOutOfRange(structure: "pool header", field: "block size", value: UInt64(blockSize))
        }
        let header = PoolHeader(
            poolID: reader.slice(16, 16), blockCount: reader.get(UInt64.self, at: 32),
            updateCounter: reader.get(UInt64.self, at: 40),
            keyslotDigests: (0..<PoolLayout.keyslotCount).map { reader.slice(48 + 32 * $0, 32) })
        return (header, reader.slice(0, authenticatedLength), reader.slice(authenticatedLength, 32))
    }
}
