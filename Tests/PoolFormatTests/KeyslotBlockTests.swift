import PoolFormat
import Testing

@Suite struct KeyslotBlockTests {
    func slot(type: KeyslotType = .passphrase, slot: UInt32 = 3, extra: [UInt8] = []) -> KeyslotBlock {
        KeyslotBlock(
            type: type, slot: slot, salt: patterned(32, seed: 1), kdfLog2N: 17, kdfR: 8, kdfP: 2, nonce: patterned(12, seed: 2),
            sealedKey: patterned(32, seed: 3), tag: patterned(16, seed: 4), extra: extra)
    }

    @Test(arguments: [KeyslotType.passphrase, .recovery, .tpm2])
    func roundTrip(type: KeyslotType) throws {
        for extra in [[], [0xAB], patterned(KeyslotBlock.maxExtraLength, seed: 5)] {
            let original = slot(type: type, extra: extra)
            let bytes = original.encoded()
            #expect(bytes.count == 4096)
            #expect(try KeyslotBlock.decode(bytes) == original)
        }
        for index in 0..<UInt32(PoolLayout.keyslotCount) {
            #expect(try KeyslotBlock.decode(slot(type: type, slot: index).encoded())?.slot == index)
        }
    }

    @Test func layout() {
        let original = slot(extra: [1, 2, 3])
        let bytes = original.encoded()
        #expect(Array(bytes[0..<64]) == original.parameterBytes())
        #expect(littleEndian(UInt64.self, bytes, at: 0) == magicNumber("BULKKEY1"))
        #expect(littleEndian(UInt16.self, bytes, at: 8) == 1)
        #expect(littleEndian(UInt16.self, bytes, at: 10) == 1)
        #expect(littleEndian(UInt32.self, bytes, at: 12) == 3)
        #expect(Array(bytes[16..<48]) == original.salt)
        #expect(bytes[48] == 17)
        #expect(littleEndian(UInt32.self, bytes, at: 52) == 8)
        #expect(littleEndian(UInt32.self, bytes, at: 56) == 2)
        #expect(Array(bytes[64..<76]) == original.nonce)
        #expect(Array(bytes[76..<108]) == original.sealedKey)
        #expect(Array(bytes[108..<124]) == original.tag)
        #expect(littleEndian(UInt16.self, bytes, at: 124) == 3)
        #expect(Array(bytes[126..<129]) == [1, 2, 3])
        #expect(bytes[129...].allSatisfy { $0 == 0 })
    }

    @Test func emptySlotIsNil() throws {
        #expect(try KeyslotBlock.decode([UInt8](repeating: 0, count: 4096)) == nil)
        // One non-zero byte anywhere makes it a (broken) keyslot, not an empty one.
        var almost = [UInt8](repeating: 0, count: 4096)
        almost[4095] = 1
        #expect(formatError { () throws(FormatError) in try KeyslotBlock.decode(almost) } == .badMagic(structure: "keyslot", found: 0))
    }

    @Test func badType() {
        for type: UInt16 in [0, 4, 0xFFFF] {
            var bytes = slot().encoded()
            store(type, into: &bytes, at: 10)
            #expect(
                formatError { () throws(FormatError) in try KeyslotBlock.decode(bytes) }
                    == .fieldOutOfRange(structure: "keyslot", field: "type", value: UInt64(type)))
        }
    }

    @Test func badSlot() {
        for index: UInt32 in [15, 16, .max] {
            var bytes = slot().encoded()
            store(index, into: &bytes, at: 12)
            #expect(
                formatError { () throws(FormatError) in try KeyslotBlock.decode(bytes) }
                    == .fieldOutOfRange(structure: "keyslot", field: "slot", value: UInt64(index)))
        }
    }

    @Test func extraLengthBounds() throws {
        #expect(KeyslotBlock.maxExtraLength == 4096 - 126)
        var longest = slot().encoded()
        store(UInt16(KeyslotBlock.maxExtraLength), into: &longest, at: 124)
        #expect(try KeyslotBlock.decode(longest)?.extra.count == KeyslotBlock.maxExtraLength)
        for length in [KeyslotBlock.maxExtraLength + 1, 4096, Int(UInt16.max)] {
            var bytes = slot().encoded()
            store(UInt16(length), into: &bytes, at: 124)
            #expect(
                formatError { () throws(FormatError) in try KeyslotBlock.decode(bytes) }
                    == .fieldOutOfRange(structure: "keyslot", field: "extra length", value: UInt64(length)))
        }
    }

    @Test func magicVersionAndSize() {
        var magic = slot().encoded()
        magic[3] = 0
        #expect(
            formatError { () throws(FormatError) in try KeyslotBlock.decode(magic) }
                == .badMagic(structure: "keyslot", found: littleEndian(UInt64.self, magic, at: 0)))
        var version = slot().encoded()
        store(UInt16(2), into: &version, at: 8)
        #expect(formatError { () throws(FormatError) in try KeyslotBlock.decode(version) } == .unsupportedVersion(structure: "keyslot", found: 2))
        for size in wrongBlockSizes {
            #expect(
                formatError { () throws(FormatError) in try KeyslotBlock.decode([UInt8](repeating: 0, count: size)) }
                    == .wrongSize(structure: "keyslot", expected: 4096, found: size))
        }
    }

    /// The parameter bytes (the AEAD's associated data) change with every
    /// field that decides how the wrapping key is derived.
    @Test func parameterBytesBindEveryKDFField() {
        let base = slot()
        var variants = [base]
        var changed = base
        changed.type = .recovery
        variants.append(changed)
        changed = base
        changed.slot = 4
        variants.append(changed)
        changed = base
        changed.salt[31] ^= 1
        variants.append(changed)
        changed = base
        changed.kdfLog2N = 18
        variants.append(changed)
        changed = base
        changed.kdfR = 9
        variants.append(changed)
        changed = base
        changed.kdfP = 3
        variants.append(changed)
        #expect(Set(variants.map { $0.parameterBytes() }).count == variants.count)
    }
}
