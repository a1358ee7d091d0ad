import Crypto
import Foundation
import PoolFormat

/// Why a sealed block did not open.
public struct SealError: Error, Sendable, Equatable {}

/// AES-256-GCM over whole blocks with a counter nonce: the 64-bit counter
/// as 8 little-endian bytes followed by 4 zero bytes (docs/format.md,
/// section 4). The caller guarantees each counter is used once per key.
public struct BlockSealer: Sendable {
    private let key: SymmetricKey

    init(key: SymmetricKey) { self.key = key }

    /// The 96-bit nonce for a counter.
    public static func nonce(_ counter: NonceCounter) -> [UInt8] {
        var bytes = [UInt8](repeating: 0, count: 12)
        for index in 0..<8 { bytes[index] = UInt8(truncatingIfNeeded: counter.rawValue >> (8 * index)) }
        return bytes
    }

    /// Seals `plaintext`; returns the ciphertext (same length) and the 16-byte tag.
    public func seal(_ plaintext: some DataProtocol, counter: NonceCounter, associatedData: [UInt8]) -> (ciphertext: [UInt8], tag: [UInt8]) {
        // A 12-byte nonce and a 32-byte key always form a valid sealing.
        let box = try! AES.GCM.seal(
            plaintext, using: key, nonce: try! AES.GCM.Nonce(data: Self.nonce(counter)), authenticating: associatedData)
        return (Array(box.ciphertext), Array(box.tag))
    }

    /// Opens a sealed block, or throws if anything about it is not as sealed.
    public func open(_ ciphertext: some DataProtocol, tag: [UInt8], counter: NonceCounter, associatedData: [UInt8]) throws(SealError) -> [UInt8] {
        do {
            let box = try AES.GCM.SealedBox(nonce: AES.GCM.Nonce(data: Self.nonce(counter)), ciphertext: ciphertext, tag: tag)
            return Array(try AES.GCM.open(box, using: key, authenticating: associatedData))
        } catch {
            throw SealError()
        }
    }
}
