import PoolFormat
import Testing

@Suite struct SuperblockTests {
    let superblock = Superblock(
        poolID: samplePoolID, generation: 0x0102_0304_0506_0708, anchorEpoch: 77, checkpointRoot: samplePointer(1),
        logHead: samplePointer(2), logRecordCount: 123_456, logBlockCount: 2470)
    let mac = patterned(32, seed: 7)

    @Test func roundTrip() throws {
        let block = superblock.block(mac: mac)
        #expect(block.count == PoolLayout.blockSize)
        let (decoded, authenticated, decodedMAC) = try Superblock.decode(block)
        #expect(decoded == superblock)
        #expect(authenticated == superblock.authenticatedBytes())
        #expect(authenticated.count == Superblock.authenticatedLength)
        #expect(Array(block[0..<192]) == authenticated)
        #expect(decodedMAC == mac)
        #expect(block[224...].allSatisfy { $0 == 0 })
    }

    @Test func layout() {
        let bytes = superblock.authenticatedBytes()
        #expect(littleEndian(UInt64.self, bytes, at: 0) == magicNumber("BULKSUP1"))
        #expect(littleEndian(UInt16.self, bytes, at: 8) == PoolLayout.formatVersion)
        #expect(Array(bytes[16..<32]) == samplePoolID)
        #expect(littleEndian(UInt64.self, bytes, at: 32) == superblock.generation)
        #expect(littleEndian(UInt64.self, bytes, at: 40) == 77)
        #expect(Array(bytes[48..<112]) == superblock.checkpointRoot.encoded())
        #expect(Array(bytes[112..<176]) == superblock.logHead.encoded())
        #expect(littleEndian(UInt64.self, bytes, at: 176) == 123_456)
        #expect(littleEndian(UInt64.self, bytes, at: 184) == 2470)
    }

    /// Every field byte is decoded: flipping it changes the superblock or
    /// makes it undecodable.
    @Test func everyFieldByteMatters() throws {
        let original = superblock.block(mac: mac)
        for offset in Array(0..<10) + Array(16..<192) {
            var bytes = original
            bytes[offset] ^= 0x10
            guard let (decoded, _, _) = try? Superblock.decode(bytes) else { continue }
            #expect(decoded != superblock, "offset \(offset)")
        }
    }

    /// Bytes 10..<16 are not decoded; they are inside the HMAC input, so a
    /// change there fails the HMAC, and the padding after the HMAC is unused.
    @Test func undecodedBytesAreInsideTheMACInputOrUnused() throws {
        let original = superblock.block(mac: mac)
        for offset in 10..<16 {
            var bytes = original
            bytes[offset] ^= 0x01
            let (decoded, authenticated, _) = try Superblock.decode(bytes)
            #expect(decoded == superblock)
            #expect(authenticated != superblock.authenticatedBytes())
        }
    }

    @Test func badMagicAndVersion() {
        var bytes = superblock.block(mac: mac)
        bytes[0] = UInt8(ascii: "X")
        #expect(
            formatError { () throws(FormatError) in try Superblock.decode(bytes) }
                == .badMagic(structure: "superblock", found: littleEndian(UInt64.self, bytes, at: 0)))
        #expect(formatError { () throws(FormatError) in try Superblock.decode([UInt8](repeating: 0, count: 4096)) } == .badMagic(structure: "superblock", found: 0))
        for version: UInt16 in [0, 2, .max] {
            var wrong = superblock.block(mac: mac)
            store(version, into: &wrong, at: 8)
            #expect(formatError { () throws(FormatError) in try Superblock.decode(wrong) } == .unsupportedVersion(structure: "superblock", found: version))
        }
    }

    @Test func pointerReservedBytesChecked() {
        var bytes = superblock.block(mac: mac)
        bytes[48 + 60] = 1
        #expect(formatError { () throws(FormatError) in try Superblock.decode(bytes) } == .nonZeroReserved(structure: "block pointer", offset: 108))
        var log = superblock.block(mac: mac)
        log[112 + 56] = 1
        #expect(formatError { () throws(FormatError) in try Superblock.decode(log) } == .nonZeroReserved(structure: "block pointer", offset: 168))
    }

    @Test func wrongSizesThrow() {
        for size in wrongBlockSizes {
            #expect(
                formatError { () throws(FormatError) in try Superblock.decode([UInt8](repeating: 0, count: size)) }
                    == .wrongSize(structure: "superblock", expected: 4096, found: size))
        }
    }
}

@Suite struct PoolHeaderTests {
    let header = PoolHeader(
        poolID: samplePoolID, blockCount: 65_536, updateCounter: 5,
        keyslotDigests: (0..<15).map { $0 % 3 == 0 ? [UInt8](repeating: 0, count: 32) : patterned(32, seed: UInt64($0)) })
    let mac = patterned(32, seed: 8)

    @Test func roundTripAndLayout() throws {
        let block = header.block(mac: mac)
        #expect(block.count == 4096)
        let (decoded, authenticated, decodedMAC) = try PoolHeader.decode(block)
        #expect(decoded == header)
        #expect(authenticated == header.authenticatedBytes())
        #expect(authenticated.count == PoolHeader.authenticatedLength)
        #expect(decodedMAC == mac)
        #expect(littleEndian(UInt64.self, block, at: 0) == magicNumber("BULKHDR1"))
        #expect(littleEndian(UInt16.self, block, at: 8) == 1)
        #expect(littleEndian(UInt32.self, block, at: 12) == 4096)
        #expect(Array(block[16..<32]) == samplePoolID)
        #expect(littleEndian(UInt64.self, block, at: 32) == 65_536)
        #expect(littleEndian(UInt64.self, block, at: 40) == 5)
        for index in 0..<15 { #expect(Array(block[(48 + 32 * index)..<(80 + 32 * index)]) == header.keyslotDigests[index]) }
        #expect(Array(block[528..<560]) == mac)
        #expect(block[560...].allSatisfy { $0 == 0 })
    }

    /// Every field byte is decoded (changes the header or is refused); the
    /// flags at 10..<12 are not decoded but are inside the HMAC input.
    @Test func everyAuthenticatedByteMatters() throws {
        let original = header.block(mac: mac)
        for offset in 0..<PoolHeader.authenticatedLength {
            var bytes = original
            bytes[offset] ^= 0x04
            guard let (decoded, authenticated, _) = try? PoolHeader.decode(bytes) else { continue }
            #expect(authenticated != header.authenticatedBytes(), "offset \(offset)")
            if !(10..<12).contains(offset) { #expect(decoded != header, "offset \(offset)") }
        }
    }

    @Test func rejections() {
        var magic = header.block(mac: mac)
        magic[7] ^= 0xFF
        #expect(
            formatError { () throws(FormatError) in try PoolHeader.decode(magic) }
                == .badMagic(structure: "pool header", found: littleEndian(UInt64.self, magic, at: 0)))
        var version = header.block(mac: mac)
        store(UInt16(9), into: &version, at: 8)
        #expect(formatError { () throws(FormatError) in try PoolHeader.decode(version) } == .unsupportedVersion(structure: "pool header", found: 9))
        for size: UInt32 in [0, 512, 8192] {
            var blockSize = header.block(mac: mac)
            store(size, into: &blockSize, at: 12)
            #expect(
                formatError { () throws(FormatError) in try PoolHeader.decode(blockSize) }
                    == .fieldOutOfRange(structure: "pool header", field: "block size", value: UInt64(size)))
        }
        for size in wrongBlockSizes {
            #expect(
                formatError { () throws(FormatError) in try PoolHeader.decode([UInt8](repeating: 0, count: size)) }
                    == .wrongSize(structure: "pool header", expected: 4096, found: size))
        }
    }
}
