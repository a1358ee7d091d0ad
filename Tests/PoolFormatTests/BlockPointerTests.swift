import PoolFormat
import Testing

@Suite struct BlockPointerTests {
    @Test func roundTripAndLayout() throws {
        let pointer = samplePointer(3)
        let bytes = pointer.encoded()
        #expect(bytes.count == PoolLayout.pointerSize)
        #expect(try BlockPointer(decoding: bytes) == pointer)
        // The layout the engine relies on: block, salt, counter, generation, tag, 8 reserved bytes.
        #expect(littleEndian(UInt64.self, bytes, at: 0) == pointer.block)
        #expect(Array(bytes[8..<24]) == pointer.salt.bytes)
        #expect(littleEndian(UInt64.self, bytes, at: 24) == pointer.counter.rawValue)
        #expect(littleEndian(UInt64.self, bytes, at: 32) == pointer.generation)
        #expect(Array(bytes[40..<56]) == pointer.tag.bytes)
        #expect(bytes[56..<64].allSatisfy { $0 == 0 })
    }

    @Test func extremeValuesRoundTrip() throws {
        let pointer = BlockPointer(
            block: .max, salt: SessionSalt(bytes: [UInt8](repeating: 0xFF, count: 16)), counter: NonceCounter(rawValue: .max),
            generation: .max, tag: BlockTag(bytes: [UInt8](repeating: 0xFF, count: 16)))
        #expect(try BlockPointer(decoding: pointer.encoded()) == pointer)
    }

    @Test func nullIsAllZero() throws {
        #expect(BlockPointer.null.encoded() == [UInt8](repeating: 0, count: 64))
        let decoded = try BlockPointer(decoding: [UInt8](repeating: 0, count: 64))
        #expect(decoded.isNull)
        #expect(decoded == .null)
        #expect(!samplePointer(1).isNull)
    }

    /// A pointer to block 0 must be entirely zero: any other byte set is refused,
    /// so a null pointer cannot smuggle a tag, salt or generation.
    @Test func nullWithAnyNonZeroByteIsRefused() {
        for offset in 8..<56 {
            var bytes = [UInt8](repeating: 0, count: 64)
            bytes[offset] = 0x01
            #expect(
                formatError { () throws(FormatError) in try BlockPointer(decoding: bytes) }
                    == .nonZeroReserved(structure: "null block pointer", offset: offset), "offset \(offset)")
        }
    }

    @Test func reservedBytesMustBeZero() {
        for offset in 56..<64 {
            for pointer in [samplePointer(2), BlockPointer.null] {
                var bytes = pointer.encoded()
                bytes[offset] = 0x80
                #expect(
                    formatError { () throws(FormatError) in try BlockPointer(decoding: bytes) }
                        == .nonZeroReserved(structure: "block pointer", offset: offset), "offset \(offset)")
            }
        }
    }

    /// Every bit of the 56 meaningful bytes changes the decoded pointer.
    @Test func everyFieldBitMatters() throws {
        let pointer = samplePointer(9)
        let original = pointer.encoded()
        for offset in 0..<56 {
            for bit in 0..<8 {
                var bytes = original
                bytes[offset] ^= 1 << bit
                if let decoded = try? BlockPointer(decoding: bytes) {
                    #expect(decoded != pointer, "offset \(offset) bit \(bit)")
                    #expect(decoded.encoded() == bytes)
                }
            }
        }
    }

    @Test func wrongSizesThrow() {
        for size in [0, 1, 56, 63, 65, 128, 4096] {
            #expect(
                formatError { () throws(FormatError) in try BlockPointer(decoding: [UInt8](repeating: 0, count: size)) }
                    == .wrongSize(structure: "block pointer", expected: 64, found: size))
        }
    }
}
