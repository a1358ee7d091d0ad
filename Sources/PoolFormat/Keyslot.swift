/// How a keyslot's wrapping key is obtained.
public enum KeyslotType: UInt16, Sendable, Hashable, CustomStringConvertible {
    case passphrase = 1
    case recovery = 2
    case tpm2 = 3

    public var description: String {
        switch self {
        case .passphrase: "passphrase"
        case .recovery: "recovery"
        case .tpm2: "tpm2"
        }
    }
}

/// One keyslot block (docs/format.md, section 3.2): the master key sealed
/// under a key derived from a passphrase, a recovery key or a TPM.
public struct KeyslotBlock: Sendable, Hashable {
    public static let magicValue = magic("BULKKEY1")
    /// Bytes that are bound as associated data when sealing the master key.
    public static let parametersLength = 64
    /// Largest type-specific payload (TPM blobs and policy).
    public static let maxExtraLength = PoolLayout.blockSize - 126

    public var type: KeyslotType
    public var slot: UInt32
    public var salt: [UInt8]
    /// scrypt: log2 N, r, p; zero for other types.
    public var kdfLog2N: UInt8
    public var kdfR: UInt32
    public var kdfP: UInt32
    public var nonce: [UInt8]
    public var sealedKey: [UInt8]
    public var tag: [UInt8]
    public var extra: [UInt8]

    public init(
        type: KeyslotType, slot: UInt32, salt: [UInt8], kdfLog2N: UInt8, kdfR: UInt32, kdfP: UInt32, nonce: [UInt8],
        sealedKey: [UInt8], tag: [UInt8], extra: [UInt8] = []
    ) {
        precondition(salt.count == 32 && nonce.count == 12 && sealedKey.count == 32 && tag.count == 16)
        precondition(extra.count <= Self.maxExtraLength)
        self.type = type
        self.slot = slot
        self.salt = salt
        self.kdfLog2N = kdfLog2N
        self.kdfR = kdfR
        self.kdfP = kdfP
        self.nonce = nonce
        self.sealedKey = sealedKey
        self.tag = tag
        self.extra = extra
    }

    /// The associated data of the seal: the first 64 bytes (everything that
    /// determines how the key is derived), the length and bytes of the
    /// type-specific data, and the pool ID.
    public func associatedData(poolID: [UInt8]) -> [UInt8] {
        parameterBytes() + [UInt8(truncatingIfNeeded: extra.count), UInt8(truncatingIfNeeded: extra.count >> 8)] + extra + poolID
    }

    /// The first 64 bytes: everything that determines how the key is derived.
    public func parameterBytes() -> [UInt8] {
        var writer = ByteWriter(size: Self.parametersLength)
        writer.put(Self.magicValue, at: 0)
        writer.put(PoolLayout.formatVersion, at: 8)
        writer.put(type.rawValue, at: 10)
        writer.put(slot, at: 12)
        writer.put(salt, at: 16)
        writer.put(kdfLog2N, at: 48)
        writer.put(kdfR, at: 52)
        writer.put(kdfP, at: 56)
        return writer.bytes
    }

    public func encoded() -> [UInt8] {
        var writer = ByteWriter(size: PoolLayout.blockSize)
        writer.put(parameterBytes(), at: 0)
        writer.put(nonce, at: 64)
        writer.put(sealedKey, at: 76)
        writer.put(tag, at: 108)
        writer.put(UInt16(extra.count), at: 124)
        writer.put(extra, at: 126)
        return writer.bytes
    }

    /// Decodes a keyslot block; nil for an empty (all-zero) slot.
    public static func decode(_ block: [UInt8]) throws(FormatError) -> KeyslotBlock? {
        guard block.count == PoolLayout.blockSize else {
            throw .wrongSize(structure: "keyslot", expected: PoolLayout.blockSize, found: block.count)
        }
        if block.allSatisfy({ $0 == 0 }) { return nil }
        let reader = ByteReader(bytes: block)
        let found = reader.get(UInt64.self, at: 0)
        guard found == magicValue else { throw .badMagic(structure: "keyslot", found: found) }
        let version = reader.get(UInt16.self, at: 8)
        guard version == PoolLayout.formatVersion else { throw .unsupportedVersion(structure: "keyslot", found: version) }
        let rawType = reader.get(UInt16.self, at: 10)
        guard let type = KeyslotType(rawValue: rawType) else {
            throw .fieldOutOfRange(structure: "keyslot", field: "type", value: UInt64(rawType))
        }
        let slot = reader.get(UInt32.self, at: 12)
        guard slot < PoolLayout.keyslotCount else { throw .fieldOutOfRange(structure: "keyslot", field: "slot", value: UInt64(slot)) }
        let extraLength = Int(reader.get(UInt16.self, at: 124))
        guard extraLength <= maxExtraLength else {
            throw .fieldOutOfRange(structure: "keyslot", field: "extra length", value: UInt64(extraLength))
        }
        // Every byte outside the fields must be zero, so that no bit of a
        // keyslot escapes the associated data of its seal.
        for offset in Array(49..<52) + Array(60..<64) + Array((126 + extraLength)..<PoolLayout.blockSize) where block[offset] != 0 {
            throw .nonZeroReserved(structure: "keyslot", offset: offset)
        }
        return KeyslotBlock(
            type: type, slot: slot, salt: reader.slice(16, 32), kdfLog2N: reader.get(UInt8.self, at: 48),
            kdfR: reader.get(UInt32.self, at: 52), kdfP: reader.get(UInt32.self, at: 56), nonce: reader.slice(64, 12),
            sealedKey: reader.slice(76, 32), tag: reader.slice(108, 16), extra: reader.slice(126, extraLength))
    }
}
