import Crypto
import Foundation
import PoolFormat
import Testing

@testable import Keys

/// The BoringSSL AEAD context behind BlockSealer, with arbitrary nonces:
/// McGrew and Viega's AES-256-GCM test cases 15 and 16, in place and out
/// of place, and what a failed open leaves behind.
@Suite struct GCMContextTests {
    let key = SymmetricKey(data: bytes("feffe9928665731c6d6a8f9467308308feffe9928665731c6d6a8f9467308308"))
    let nonce = bytes("cafebabefacedbaddecaf888")
    let plaintext = bytes(
        """
        d9313225f88406e5a55909c5aff5269a86a7a9531534f7da2e4c303d8a318a72
        1c3c0c95956809532fcf0e2449a6b525b16aedf5aa0de657ba637b391aafd255
        """)
    let ciphertext = bytes(
        """
        522dc1f099567d07f47f37a32a84427d643a8cdcbfe5c0c97598a2bd2555d1aa
        8cb08e48590dbb3da7b08b1056828838c5f61e6393ba7a0abcc9f662898015ad
        """)

    func seal(_ context: GCMContext, _ input: [UInt8], ad: [UInt8]) -> (ciphertext: [UInt8], tag: [UInt8]) {
        var output = input
        var tag = [UInt8](repeating: 0, count: 16)
        nonce.withUnsafeBytes { nonce in
            ad.withUnsafeBytes { ad in
                output.withUnsafeMutableBytes { buffer in
                    tag.withUnsafeMutableBytes { tag in
                        context.seal(nonce: nonce, associatedData: ad, input: UnsafeRawBufferPointer(buffer), output: buffer, tag: tag)
                    }
                }
            }
        }
        return (output, tag)
    }

    func open(_ context: GCMContext, _ input: [UInt8], tag: [UInt8], ad: [UInt8], inPlace: Bool) -> (Bool, [UInt8]) {
        var output = inPlace ? input : [UInt8](repeating: 0xEE, count: input.count)
        var source = input
        let opened = nonce.withUnsafeBytes { nonce in
            ad.withUnsafeBytes { ad in
                tag.withUnsafeBytes { tag in
                    output.withUnsafeMutableBytes { target in
                        if inPlace {
                            return context.open(nonce: nonce, associatedData: ad, input: UnsafeRawBufferPointer(target), output: target, tag: tag)
                        }
                        return source.withUnsafeMutableBytes { source in
                            context.open(nonce: nonce, associatedData: ad, input: UnsafeRawBufferPointer(source), output: target, tag: tag)
                        }
                    }
                }
            }
        }
        return (opened, output)
    }

    @Test func mcgrewViegaCase15InPlace() {
        let context = GCMContext(key: key)
        let sealed = seal(context, plaintext, ad: [])
        #expect(sealed.ciphertext == ciphertext)
        #expect(hexString(sealed.tag) == "b094dac5d93471bdec1a502270e3cc6c")
        let (opened, output) = open(context, ciphertext, tag: sealed.tag, ad: [], inPlace: true)
        #expect(opened)
        #expect(output == plaintext)
    }

    @Test func mcgrewViegaCase16OutOfPlace() {
        let context = GCMContext(key: key)
        let ad = bytes("feedfacedeadbeeffeedfacedeadbeefabaddad2")
        let shortPlain = Array(plaintext.prefix(60))
        let sealed = seal(context, shortPlain, ad: ad)
        #expect(sealed.ciphertext == Array(ciphertext.prefix(60)))
        #expect(hexString(sealed.tag) == "76fc6ece0f4e1768cddf8853bb2d551b")
        let (opened, output) = open(context, sealed.ciphertext, tag: sealed.tag, ad: ad, inPlace: false)
        #expect(opened)
        #expect(output == shortPlain)
    }

    /// One context alternates sealing and opening with different nonces and
    /// data; every result matches swift-crypto's.
    @Test func reusedContextMatchesSwiftCrypto() throws {
        let context = GCMContext(key: key)
        for round in 0..<20 {
            let data = (0..<(round * 211 % 4097)).map { UInt8(truncatingIfNeeded: $0 * 31 + round) }
            let ad = (0..<(round % 5 * 7)).map { UInt8(truncatingIfNeeded: $0 + round) }
            let sealed = seal(context, data, ad: ad)
            let box = try AES.GCM.seal(data, using: key, nonce: AES.GCM.Nonce(data: nonce), authenticating: ad)
            #expect(sealed.ciphertext == Array(box.ciphertext))
            #expect(sealed.tag == Array(box.tag))
            let (opened, output) = open(context, sealed.ciphertext, tag: sealed.tag, ad: ad, inPlace: round % 2 == 0)
            #expect(opened && output == data)
        }
    }

    /// A failed in-place open gives the ciphertext back (the caller reports
    /// its digest); a failed open into another buffer zeroes it. Neither
    /// leaves unauthenticated plaintext.
    @Test func failedOpenLeavesNoPlaintext() {
        let context = GCMContext(key: key)
        let sealed = seal(context, plaintext, ad: [1, 2, 3])
        var badTag = sealed.tag
        badTag[5] ^= 0x01
        let (openedInPlace, inPlace) = open(context, sealed.ciphertext, tag: badTag, ad: [1, 2, 3], inPlace: true)
        #expect(!openedInPlace)
        #expect(inPlace == sealed.ciphertext)
        let (openedApart, apart) = open(context, sealed.ciphertext, tag: sealed.tag, ad: [1, 2, 4], inPlace: false)
        #expect(!openedApart)
        #expect(apart == [UInt8](repeating: 0, count: plaintext.count))
        let (openedShortTag, _) = open(context, sealed.ciphertext, tag: Array(sealed.tag.prefix(12)), ad: [1, 2, 3], inPlace: false)
        #expect(!openedShortTag)
    }

    /// An in-place open copies the ciphertext to the stack up to one block
    /// and to the heap above it: both sides open, and both give the
    /// ciphertext back when the tag does not match.
    @Test(arguments: [1, GCMContext.stackCopyLimit - 1, GCMContext.stackCopyLimit, GCMContext.stackCopyLimit + 1, 3 * GCMContext.stackCopyLimit])
    func inPlaceOpenOnEitherSideOfStackCopyLimit(size: Int) {
        let context = GCMContext(key: key)
        let data = (0..<size).map { UInt8(truncatingIfNeeded: $0 &* 7 &+ size) }
        let sealed = seal(context, data, ad: [9])
        let (opened, output) = open(context, sealed.ciphertext, tag: sealed.tag, ad: [9], inPlace: true)
        #expect(opened && output == data)
        var badTag = sealed.tag
        badTag[0] ^= 0x80
        let (openedBad, kept) = open(context, sealed.ciphertext, tag: badTag, ad: [9], inPlace: true)
        #expect(!openedBad && kept == sealed.ciphertext)
    }

    /// An in-place open that keeps no copy gives the plaintext back, or
    /// zeroes the buffer when the tag, the data or the associated data is
    /// wrong (the fast path then reads the block again to report it).
    @Test(arguments: [1, 4096, 3 * 4096])
    func inPlaceOpenWithoutACopyZeroesOnFailure(size: Int) {
        let context = GCMContext(key: key)
        let data = (0..<size).map { UInt8(truncatingIfNeeded: $0 &* 13 &+ 5) }
        let sealed = seal(context, data, ad: [4])
        func openInPlace(_ ciphertext: [UInt8], tag: [UInt8], ad: [UInt8]) -> (Bool, [UInt8]) {
            var buffer = ciphertext
            let opened = nonce.withUnsafeBytes { nonce in
                ad.withUnsafeBytes { ad in
                    tag.withUnsafeBytes { tag in
                        buffer.withUnsafeMutableBytes { buffer in context.openInPlace(nonce: nonce, associatedData: ad, buffer: buffer, tag: tag) }
                    }
                }
            }
            return (opened, buffer)
        }
        let (opened, plain) = openInPlace(sealed.ciphertext, tag: sealed.tag, ad: [4])
        #expect(opened && plain == data)
        var badTag = sealed.tag
        badTag[15] ^= 1
        var badData = sealed.ciphertext
        badData[size / 2] ^= 0x10
        for (ciphertext, tag, ad) in [(sealed.ciphertext, badTag, [UInt8(4)]), (badData, sealed.tag, [4]), (sealed.ciphertext, sealed.tag, [5])] {
            let (openedBad, left) = openInPlace(ciphertext, tag: tag, ad: ad)
            #expect(!openedBad && left.allSatisfy { $0 == 0 })
        }
    }

    /// Many threads share one sealer, and so one AEAD context (the crypt
    /// domain's request threads do, with no lock); every block they seal
    /// opens and matches a single-threaded seal.
    @Test func sealerSharedBetweenThreads() async {
        let sealer = BlockSealer(key: key)
        let block = [UInt8](repeating: 0x3C, count: 4096)
        let reference = (0..<64).map { sealer.seal(block, counter: NonceCounter(rawValue: UInt64($0)), associatedData: [7]) }
        let mismatches = await withTaskGroup(of: Int.self) { group in
            for thread in 0..<8 {
                group.addTask {
                    var wrong = 0
                    for round in 0..<200 {
                        let counter = (thread * 7 + round) % 64
                        let sealed = sealer.seal(block, counter: NonceCounter(rawValue: UInt64(counter)), associatedData: [7])
                        if sealed.ciphertext != reference[counter].ciphertext || sealed.tag != reference[counter].tag { wrong += 1 }
                        let opened = try? sealer.open(sealed.ciphertext, tag: sealed.tag, counter: NonceCounter(rawValue: UInt64(counter)), associatedData: [7])
                        if opened != block { wrong += 1 }
                    }
                    return wrong
                }
            }
            return await group.reduce(0, +)
        }
        #expect(mismatches == 0)
    }
}
