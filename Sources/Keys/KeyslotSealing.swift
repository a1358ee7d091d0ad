import Crypto
import Foundation
import PoolFormat

/// What unlocks a keyslot.
public enum KeyslotSecret: Sendable {
    case passphrase([UInt8])
    case recovery(RecoveryKey)
}

/// Why a keyslot did not yield the master key.
public enum KeyslotError: Error, Sendable, Equatable, CustomStringConvertible {
    case wrongSecretType(slot: UInt32, type: KeyslotType)
    case costOutOfBounds(slot: UInt32, log2N: UInt8, r: UInt32, p: UInt32)
    case doesNotOpen(slot: UInt32)
    case derivationFailed(slot: UInt32)

    public var description: String {
        switch self {
        case .wrongSecretType(let slot, let type): "keyslot \(slot) is a \(type) keyslot"
        case .costOutOfBounds(let slot, let log2N, let r, let p):
            "keyslot \(slot): scrypt cost N=2^\(log2N) r=\(r) p=\(p) out of bounds (corrupt or hostile)"
        case .doesNotOpen(let slot): "keyslot \(slot): wrong passphrase or key, or the keyslot is corrupt"
        case .derivationFailed(let slot): "keyslot \(slot): key derivation failed"
        }
    }
}

/// Seals the master key into keyslots and opens them again. The keyslot's
/// parameters and the pool ID are the associated data, so a flipped bit in
/// a keyslot, or a keyslot copied from another pool, does not open.
public enum KeyslotSealer {
    public static func seal(
        _ master: MasterKey, into slot: UInt32, secret: KeyslotSecret, cost: ScryptCost = .tune(), poolID: [UInt8]
    ) throws -> KeyslotBlock {
        var generator = SystemRandomNumberGenerator()
        let salt = (0..<32).map { _ in UInt8.random(in: 0...255, using: &generator) }
        let nonce = (0..<12).map { _ in UInt8.random(in: 0...255, using: &generator) }
        var block: KeyslotBlock
        switch secret {
        case .passphrase:
            block = KeyslotBlock(
                type: .passphrase, slot: slot, salt: salt, kdfLog2N: cost.log2N, kdfR: cost.r, kdfP: cost.p, nonce: nonce,
                sealedKey: [UInt8](repeating: 0, count: 32), tag: [UInt8](repeating: 0, count: 16))
        case .recovery:
            block = KeyslotBlock(
                type: .recovery, slot: slot, salt: salt, kdfLog2N: 0, kdfR: 0, kdfP: 0, nonce: nonce,
                sealedKey: [UInt8](repeating: 0, count: 32), tag: [UInt8](repeating: 0, count: 16))
        }
        let wrapping = try wrappingKey(for: block, secret: secret)
        let box = try master.secret.withUnsafeBytes { keyBytes in
            try AES.GCM.seal(
                keyBytes, using: wrapping, nonce: AES.GCM.Nonce(data: nonce),
                authenticating: block.associatedData(poolID: poolID))
        }
        block.sealedKey = Array(box.ciphertext)
        block.tag = Array(box.tag)
        return block
    }

    public static func open(_ block: KeyslotBlock, secret: KeyslotSecret, poolID: [UInt8]) throws(KeyslotError) -> MasterKey {
        let wrapping: SymmetricKey
        do { wrapping = try wrappingKey(for: block, secret: secret) } catch let error as KeyslotError { throw error } catch {
            throw .derivationFailed(slot: block.slot)
        }
        do {
            let box = try AES.GCM.SealedBox(nonce: AES.GCM.Nonce(data: block.nonce), ciphertext: block.sealedKey, tag: block.tag)
            var plain = Array(try AES.GCM.open(box, using: wrapping, authenticating: block.associatedData(poolID: poolID)))
            return MasterKey(secret: .taking(&plain))
        } catch {
            throw .doesNotOpen(slot: block.slot)
        }
    }

    private static func wrappingKey(for block: KeyslotBlock, secret: KeyslotSecret) throws -> SymmetricKey {
        switch (block.type, secret) {
        case (.passphrase, .passphrase(let passphrase)):
            let cost = ScryptCost(log2N: block.kdfLog2N, r: block.kdfR, p: block.kdfP)
            guard cost.isWithinBounds else {
                throw KeyslotError.costOutOfBounds(slot: block.slot, log2N: block.kdfLog2N, r: block.kdfR, p: block.kdfP)
            }
            return try cost.derive(passphrase: passphrase, salt: block.salt)
        case (.recovery, .recovery(let key)):
            return key.secret.withUnsafeBytes {
                HKDF<SHA256>.deriveKey(
                    inputKeyMaterial: SymmetricKey(data: $0), salt: block.salt,
                    info: Array("bulkhead v1 recovery keyslot".utf8), outputByteCount: 32)
            }
        default:
            throw KeyslotError.wrongSecretType(slot: block.slot, type: block.type)
        }
    }
}
