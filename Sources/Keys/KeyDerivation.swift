import Crypto
import PoolFormat

/// Derives the pool's keys from the master key (docs/format.md, section 2),
/// all with HKDF-SHA256 and labels that name their purpose and version.
public struct PoolKeys: Sendable {
    public let poolID: [UInt8]
    private let master: SymmetricKey
    /// MACs the superblocks and the header (`K_sb`).
    public let superblockMAC: SymmetricKey

    public init(master: MasterKey, poolID: [UInt8]) {
        precondition(poolID.count == 16)
        self.poolID = poolID
        self.master = master.symmetricKey
        superblockMAC = HKDF<SHA256>.deriveKey(
            inputKeyMaterial: self.master, salt: poolID, info: Array("bulkhead v1 superblock".utf8), outputByteCount: 32)
    }

    /// The metadata sealing key of a session (`K_meta,s`).
    public func metadataKey(salt: SessionSalt) -> BlockSealer {
        BlockSealer(
            key: HKDF<SHA256>.deriveKey(
                inputKeyMaterial: master, salt: salt.bytes, info: Array("bulkhead v1 metadata".utf8) + poolID,
                outputByteCount: 32))
    }

    /// A volume's data sealing key in a session (`K_data,v,s`).
    public func dataKey(volume: VolumeID, volumeKey: VolumeKey, salt: SessionSalt) -> BlockSealer {
        var volumeBytes = [UInt8](repeating: 0, count: 4)
        for index in 0..<4 { volumeBytes[index] = UInt8(truncatingIfNeeded: volume.rawValue >> (8 * index)) }
        let key = volumeKey.secret.withUnsafeBytes { SymmetricKey(data: $0) }
        return BlockSealer(
            key: HKDF<SHA256>.deriveKey(
                inputKeyMaterial: key, salt: salt.bytes, info: Array("bulkhead v1 data".utf8) + poolID + volumeBytes,
                outputByteCount: 32))
    }

    /// HMAC-SHA256 under `K_sb`.
    public func mac(_ bytes: [UInt8]) -> [UInt8] {
        Array(HMAC<SHA256>.authenticationCode(for: bytes, using: superblockMAC))
    }

    /// Checks an HMAC in constant time.
    public func verifyMAC(_ mac: [UInt8], for bytes: [UInt8]) -> Bool {
        HMAC<SHA256>.isValidAuthenticationCode(mac, authenticating: bytes, using: superblockMAC)
    }
}
