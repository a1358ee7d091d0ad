import Crypto
import Foundation
import PoolFormat

/// What unlocks a keyslot.
public enum KeyslotSecret: Sendable {
    case passphrase([UInt8])
    case recovery(RecoveryKey)
    /// A TPM that unseals the master key held in a `tpm2` keyslot.
    case tpm2(any KeyslotUnsealer)
}

/// Recovers the master key from a `tpm2` keyslot's type-specific data (the
/// sealed TPM object, docs/format.md section 3.2). The result is only a
/// candidate: `KeyslotSealer.open` accepts it once the keyslot's AEAD tag,
/// under a key derived from it, verifies.
public protocol KeyslotUnsealer: Sendable {
    func unseal(_ block: KeyslotBlock) throws -> SecretBytes
}

/// Why a keyslot did not yield the master key.
public enum KeyslotError: Error, Sendable, Equatable, CustomStringConvertible {
    case wrongSecretType(slot: UInt32, type: KeyslotType)
    case costOutOfBounds(slot: UInt32, log2N: UInt8, r: UInt32, p: UInt32)
    case doesNotOpen(slot: UInt32)
    case derivationFailed(slot: UInt32)
    /// The TPM did not release the key: PCRs moved, wrong or missing PIN, another TPM.
    case unsealFailed(slot: UInt32, reason: String)

    public var description: String {
        switch self {
        case .wrongSecretType(let slot, let type): "keyslot \(slot) is a \(type) keyslot"
        case .costOutOfBounds(let slot, let log2N, let r, let p):
            "keyslot \(slot): scrypt cost N=2^\(log2N) r=\(r) p=\(p) out of bounds (corrupt or hostile)"
        case .doesNotOpen(let slot): "keyslot \(slot): wrong passphrase or key, or the keyslot is corrupt"
        case .derivationFailed(let slot): "keyslot \(slot): key derivation failed"
        case .unsealFailed(let slot, let reason): "keyslot \(slot) (tpm2): \(reason)"
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
        case .tpm2:
            throw KeyslotError.wrongSecretType(slot: slot, type: .tpm2)
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

    /// A `tpm2` keyslot: `sealObject` seals the master key in the TPM and
    /// returns the serialized sealed object, kept as the type-specific data.
    /// The master key is also sealed with AES-256-GCM under a key derived
    /// from itself, with the usual associated data, so the sealed object,
    /// its PCR selection and PIN flag are authenticated like any keyslot.
    public static func sealTPM2(
        _ master: MasterKey, into slot: UInt32, poolID: [UInt8], sealObject: (SecretBytes) throws -> [UInt8]
    ) throws -> KeyslotBlock {
        var generator = SystemRandomNumberGenerator()
        let salt = (0..<32).map { _ in UInt8.random(in: 0...255, using: &generator) }
        let nonce = (0..<12).map { _ in UInt8.random(in: 0...255, using: &generator) }
        let extra = try sealObject(master.secret)
        guard extra.count <= KeyslotBlock.maxExtraLength else {
            throw KeyslotError.unsealFailed(slot: slot, reason: "sealed object of \(extra.count) bytes does not fit a keyslot")
        }
        var block = KeyslotBlock(
            type: .tpm2, slot: slot, salt: salt, kdfLog2N: 0, kdfR: 0, kdfP: 0, nonce: nonce,
            sealedKey: [UInt8](repeating: 0, count: 32), tag: [UInt8](repeating: 0, count: 16), extra: extra)
        let box = try master.secret.withUnsafeBytes { keyBytes in
            try AES.GCM.seal(
                keyBytes, using: tpm2WrappingKey(candidate: master.secret, salt: salt), nonce: AES.GCM.Nonce(data: nonce),
                authenticating: block.associatedData(poolID: poolID))
        }
        block.sealedKey = Array(box.ciphertext)
        block.tag = Array(box.tag)
        return block
    }

    private static func tpm2WrappingKey(candidate: SecretBytes, salt: [UInt8]) -> SymmetricKey {
        candidate.withUnsafeBytes {
            HKDF<SHA256>.deriveKey(
                inputKeyMaterial: SymmetricKey(data: $0), salt: salt, info: Array("bulkhead v1 tpm2 keyslot".utf8),
                outputByteCount: 32)
        }
    }

    public static func open(_ block: KeyslotBlock, secret: KeyslotSecret, poolID: [UInt8]) throws(KeyslotError) -> MasterKey {
        if case .tpm2(let unsealer) = secret { return try openTPM2(block, unsealer: unsealer, poolID: poolID) }
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

    private static func openTPM2(_ block: KeyslotBlock, unsealer: any KeyslotUnsealer, poolID: [UInt8]) throws(KeyslotError) -> MasterKey {
        guard block.type == .tpm2 else { throw .wrongSecretType(slot: block.slot, type: block.type) }
        let candidate: SecretBytes
        do { candidate = try unsealer.unseal(block) } catch {
            throw .unsealFailed(slot: block.slot, reason: "\(error)")
        }
        guard candidate.count == MasterKey.length else { throw .doesNotOpen(slot: block.slot) }
        do {
            let box = try AES.GCM.SealedBox(nonce: AES.GCM.Nonce(data: block.nonce), ciphertext: block.sealedKey, tag: block.tag)
            var plain = Array(
                try AES.GCM.open(
                    box, using: tpm2WrappingKey(candidate: candidate, salt: block.salt),
                    authenticating: block.associatedData(poolID: poolID)))
            defer { plain.withUnsafeMutableBytes { explicit_bzero($0.baseAddress!, $0.count) } }
            // The sealed copy must be the unsealed key itself: the tag alone
            // proves only that the keyslot was made with that key.
            let same = candidate.withUnsafeBytes { raw in zip(raw, plain).reduce(UInt8(0)) { $0 | ($1.0 ^ $1.1) } == 0 }
            guard same, plain.count == MasterKey.length else { throw KeyslotError.doesNotOpen(slot: block.slot) }
            return MasterKey(secret: candidate)
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
