import Crypto
import Foundation
import PoolFormat

/// Why a sealed block did not open.
public struct SealError: Error, Sendable, Equatable {}

/// AES-256-GCM over whole blocks with a counter nonce: the 64-bit counter
/// as 8 little-endian bytes followed by 4 zero bytes (docs/format.md,
/// section 4). The caller guarantees each counter is used once per key.
/// Sealers are cheap to copy and safe to share between threads; each keeps
/// its expanded key in one cipher context used by every thread.
public struct BlockSealer: Sendable {
    public static let tagLength = GCMContext.tagLength
    private let context: GCMContext

    init(key: SymmetricKey) { context = GCMContext(key: key) }

    /// The 96-bit nonce for a counter.
    public static func nonce(_ counter: NonceCounter) -> [UInt8] {
        withNonce(counter) { Array($0) }
    }

    private static func withNonce<T>(_ counter: NonceCounter, _ body: (UnsafeRawBufferPointer) -> T) -> T {
        var nonce: (UInt64, UInt32) = (counter.rawValue.littleEndian, 0)
        return withUnsafeBytes(of: &nonce) { body(UnsafeRawBufferPointer(rebasing: $0[0..<12])) }
    }

    /// Seals `plaintext` into `ciphertext` (same length; may be the same
    /// memory, to seal in place) and writes the 16-byte tag into `tag`.
    public func seal(
        _ plaintext: UnsafeRawBufferPointer, into ciphertext: UnsafeMutableRawBufferPointer,
        tag: UnsafeMutableRawBufferPointer, counter: NonceCounter, associatedData: UnsafeRawBufferPointer
    ) {
        Self.withNonce(counter) { nonce in
            context.seal(nonce: nonce, associatedData: associatedData, input: plaintext, output: ciphertext, tag: tag)
        }
    }

    /// Opens `ciphertext` into `plaintext` (same length; may be the same
    /// memory). On failure no plaintext is left: opened in place, the
    /// buffer holds the ciphertext again; otherwise `plaintext` is zeroed.
    public func open(
        _ ciphertext: UnsafeRawBufferPointer, into plaintext: UnsafeMutableRawBufferPointer, tag: UnsafeRawBufferPointer,
        counter: NonceCounter, associatedData: UnsafeRawBufferPointer
    ) throws(SealError) {
        let opened = Self.withNonce(counter) { nonce in
            context.open(nonce: nonce, associatedData: associatedData, input: ciphertext, output: plaintext, tag: tag)
        }
        guard opened else { throw SealError() }
    }

    /// Opens `buffer` in place without keeping a copy of its ciphertext:
    /// faster than `open(_:into:...)` in place, but a failure leaves the
    /// buffer zeroed, so the caller must read the block again to report it.
    public func openInPlace(
        _ buffer: UnsafeMutableRawBufferPointer, tag: UnsafeRawBufferPointer, counter: NonceCounter,
        associatedData: UnsafeRawBufferPointer
    ) throws(SealError) {
        let opened = Self.withNonce(counter) { nonce in
            context.openInPlace(nonce: nonce, associatedData: associatedData, buffer: buffer, tag: tag)
        }
        guard opened else { throw SealError() }
    }

    /// Seals `plaintext`; returns the ciphertext (same length) and the 16-byte tag.
    public func seal(_ plaintext: some DataProtocol, counter: NonceCounter, associatedData: [UInt8]) -> (ciphertext: [UInt8], tag: [UInt8]) {
        let input = Array(plaintext)
        var ciphertext = [UInt8](repeating: 0, count: input.count)
        var tag = [UInt8](repeating: 0, count: Self.tagLength)
        input.withUnsafeBytes { source in
            ciphertext.withUnsafeMutableBytes { target in
                tag.withUnsafeMutableBytes { tagBytes in
                    associatedData.withUnsafeBytes { ad in
                        seal(source, into: target, tag: tagBytes, counter: counter, associatedData: ad)
                    }
                }
            }
        }
        return (ciphertext, tag)
    }

    /// Opens a sealed block, or throws if anything about it is not as sealed.
    public func open(_ ciphertext: some DataProtocol, tag: [UInt8], counter: NonceCounter, associatedData: [UInt8]) throws(SealError) -> [UInt8] {
        let input = Array(ciphertext)
        var plaintext = [UInt8](repeating: 0, count: input.count)
        let opened = input.withUnsafeBytes { source in
            plaintext.withUnsafeMutableBytes { target in
                tag.withUnsafeBytes { tagBytes in
                    associatedData.withUnsafeBytes { ad in
                        do throws(SealError) {
                            try open(source, into: target, tag: tagBytes, counter: counter, associatedData: ad)
                            return true
                        } catch { return false }
                    }
                }
            }
        }
        guard opened else { throw SealError() }
        return plaintext
    }
}
