import Crypto
import Foundation
import PoolFormat
import Testing

@testable import Keys

/// AES-256-GCM known answers from McGrew and Viega, "The Galois/Counter
/// Mode of Operation (GCM)", test cases 13, 14 and 16. BlockSealer's nonce
/// is the counter as 8 little-endian bytes and 4 zero bytes, so the
/// all-zero IV of cases 13 and 14 is counter 0; case 16's IV does not have
/// that shape and is checked against swift-crypto directly, which
/// `sealerIsPlainAESGCMWithTheCounterNonce` then ties to BlockSealer.
@Suite struct BlockSealerTests {
    let zeroKey = SymmetricKey(data: [UInt8](repeating: 0, count: 32))

    @Test func mcgrewViegaCase13() throws {
        let sealer = BlockSealer(key: zeroKey)
        let sealed = sealer.seal([UInt8](), counter: NonceCounter(rawValue: 0), associatedData: [])
        #expect(sealed.ciphertext.isEmpty)
        #expect(hexString(sealed.tag) == "530f8afbc74536b9a963b4f1c4cb738b")
        #expect(try sealer.open([UInt8](), tag: sealed.tag, counter: NonceCounter(rawValue: 0), associatedData: []).isEmpty)
    }

    @Test func mcgrewViegaCase14() throws {
        let sealer = BlockSealer(key: zeroKey)
        let sealed = sealer.seal([UInt8](repeating: 0, count: 16), counter: NonceCounter(rawValue: 0), associatedData: [])
        #expect(hexString(sealed.ciphertext) == "cea7403d4d606b6e074ec5d3baf39d18")
        #expect(hexString(sealed.tag) == "d0d1c8a799996bf0265b98b5d48ab919")
        let opened = try sealer.open(
            bytes("cea7403d4d606b6e074ec5d3baf39d18"), tag: bytes("d0d1c8a799996bf0265b98b5d48ab919"), counter: NonceCounter(rawValue: 0),
            associatedData: [])
        #expect(opened == [UInt8](repeating: 0, count: 16))
    }

    @Test func mcgrewViegaCase16() throws {
        let key = SymmetricKey(data: bytes("feffe9928665731c6d6a8f9467308308feffe9928665731c6d6a8f9467308308"))
        let plaintext = bytes(
            """
            d9313225f88406e5a55909c5aff5269a86a7a9531534f7da2e4c303d8a318a72
            1c3c0c95956809532fcf0e2449a6b525b16aedf5aa0de657ba637b39
            """)
        let ad = bytes("feedfacedeadbeeffeedfacedeadbeefabaddad2")
        let nonce = try AES.GCM.Nonce(data: bytes("cafebabefacedbaddecaf888"))
        let box = try AES.GCM.seal(plaintext, using: key, nonce: nonce, authenticating: ad)
        #expect(
            hexString(box.ciphertext)
                == "522dc1f099567d07f47f37a32a84427d643a8cdcbfe5c0c97598a2bd2555d1aa8cb08e48590dbb3da7b08b1056828838c5f61e6393ba7a0abcc9f662")
        #expect(hexString(box.tag) == "76fc6ece0f4e1768cddf8853bb2d551b")
    }

    @Test func nonceShape() {
        #expect(BlockSealer.nonce(NonceCounter(rawValue: 0)) == [UInt8](repeating: 0, count: 12))
        #expect(BlockSealer.nonce(NonceCounter(rawValue: 0x0102_0304_0506_0708)) == [8, 7, 6, 5, 4, 3, 2, 1, 0, 0, 0, 0])
        #expect(BlockSealer.nonce(NonceCounter(rawValue: .max)) == [UInt8](repeating: 0xFF, count: 8) + [0, 0, 0, 0])
    }

    /// For arbitrary counters, BlockSealer is exactly AES-256-GCM with the
    /// documented nonce (so case 16's check of the primitive carries over).
    @Test func sealerIsPlainAESGCMWithTheCounterNonce() throws {
        let keyBytes = (0..<32).map { UInt8($0 * 7 & 0xFF) }
        let sealer = BlockSealer(key: SymmetricKey(data: keyBytes))
        let plaintext = (0..<4096).map { UInt8($0 % 251) }
        let ad = Array("associated".utf8)
        for counter: UInt64 in [1, 0xFF, 0x1_0000_0000, .max] {
            let sealed = sealer.seal(plaintext, counter: NonceCounter(rawValue: counter), associatedData: ad)
            let box = try AES.GCM.seal(
                plaintext, using: SymmetricKey(data: keyBytes), nonce: AES.GCM.Nonce(data: BlockSealer.nonce(NonceCounter(rawValue: counter))),
                authenticating: ad)
            #expect(sealed.ciphertext == Array(box.ciphertext))
            #expect(sealed.tag == Array(box.tag))
            #expect(sealed.ciphertext.count == plaintext.count)
        }
    }

    @Test func anyChangeFailsToOpen() throws {
        let sealer = BlockSealer(key: SymmetricKey(data: [UInt8](repeating: 9, count: 32)))
        let other = BlockSealer(key: SymmetricKey(data: [UInt8](repeating: 8, count: 32)))
        let plaintext = [UInt8](repeating: 0x5A, count: 4096)
        let ad = Array("block 7".utf8)
        let counter = NonceCounter(rawValue: 41)
        let sealed = sealer.seal(plaintext, counter: counter, associatedData: ad)
        #expect(try sealer.open(sealed.ciphertext, tag: sealed.tag, counter: counter, associatedData: ad) == plaintext)
        for index in [0, 1, 2047, 4095] {
            var ciphertext = sealed.ciphertext
            ciphertext[index] ^= 0x01
            #expect(throws: SealError.self) { try sealer.open(ciphertext, tag: sealed.tag, counter: counter, associatedData: ad) }
        }
        for index in 0..<16 {
            var tag = sealed.tag
            tag[index] ^= 0x80
            #expect(throws: SealError.self) { try sealer.open(sealed.ciphertext, tag: tag, counter: counter, associatedData: ad) }
        }
        #expect(throws: SealError.self) { try sealer.open(sealed.ciphertext, tag: sealed.tag, counter: NonceCounter(rawValue: 42), associatedData: ad) }
        #expect(throws: SealError.self) { try sealer.open(sealed.ciphertext, tag: sealed.tag, counter: counter, associatedData: Array("block 8".utf8)) }
        #expect(throws: SealError.self) { try other.open(sealed.ciphertext, tag: sealed.tag, counter: counter, associatedData: ad) }
        #expect(throws: SealError.self) { try sealer.open(sealed.ciphertext, tag: Array(sealed.tag.prefix(15)), counter: counter, associatedData: ad) }
        #expect(throws: SealError.self) { try sealer.open(Array(sealed.ciphertext.dropLast()), tag: sealed.tag, counter: counter, associatedData: ad) }
    }

    @Test func counterChangesCiphertext() {
        let sealer = BlockSealer(key: SymmetricKey(data: [UInt8](repeating: 1, count: 32)))
        let plaintext = [UInt8](repeating: 0, count: 64)
        let first = sealer.seal(plaintext, counter: NonceCounter(rawValue: 1), associatedData: [])
        let second = sealer.seal(plaintext, counter: NonceCounter(rawValue: 2), associatedData: [])
        #expect(first.ciphertext != second.ciphertext)
        #expect(first.ciphertext != plaintext)
    }
}
