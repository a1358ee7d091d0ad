import PoolFormat
import Testing

/// Tags and salts are held inline; their bytes, order and identity must be
/// exactly those of the 16 bytes they were made from.
@Suite struct InlineBytesTests {
    @Test func tagKeepsItsBytesInOrder() {
        let bytes = patterned(16, seed: 11)
        let tag = BlockTag(bytes: bytes)
        #expect(tag.bytes == bytes)
        #expect(tag.withUnsafeBytes { Array($0) } == bytes)
        #expect(bytes.withUnsafeBytes { BlockTag(bytes: $0) } == tag)
        #expect(BlockTag.zero.bytes == [UInt8](repeating: 0, count: 16))
        #expect(tag.description == bytes.map { ($0 < 16 ? "0" : "") + String($0, radix: 16) }.joined())
    }

    @Test func sealingWritesIntoTheTagItself() {
        var tag = BlockTag.zero
        tag.withUnsafeMutableBytes { raw in
            for index in 0..<raw.count { raw[index] = UInt8(index + 1) }
        }
        #expect(tag.bytes == Array(1...16))
    }

    /// Every byte position distinguishes two tags and two salts.
    @Test func everyByteMatters() {
        let base = patterned(16, seed: 12)
        var tags: Set<BlockTag> = [BlockTag(bytes: base)]
        var salts: Set<SessionSalt> = [SessionSalt(bytes: base)]
        for index in 0..<16 {
            var changed = base
            changed[index] ^= 0x80
            tags.insert(BlockTag(bytes: changed))
            salts.insert(SessionSalt(bytes: changed))
            #expect(BlockTag(bytes: changed) != BlockTag(bytes: base))
            #expect(SessionSalt(bytes: changed).bytes == changed)
        }
        #expect(tags.count == 17)
        #expect(salts.count == 17)
    }

    /// Pointers equal in block and counter but not otherwise are distinct
    /// (the hash covers only block and counter).
    @Test func pointersDifferingOnlyInSaltTagOrGenerationAreDistinct() {
        let pointer = samplePointer(4)
        var other = [pointer, pointer, pointer]
        other[0].salt = SessionSalt(bytes: patterned(16, seed: 77))
        other[1].tag = BlockTag(bytes: patterned(16, seed: 78))
        other[2].generation += 1
        #expect(Set(other + [pointer]).count == 4)
        #expect(Set([pointer, samplePointer(4)]).count == 1)
    }
}
