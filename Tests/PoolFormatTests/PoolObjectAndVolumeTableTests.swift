import PoolFormat
import Testing

@Suite struct PoolObjectTests {
    func object(tables: Int, depth: UInt16 = 2) -> PoolObject {
        PoolObject(
            blockCount: 1 << 30, spaceMapDepth: depth, spaceMapRoot: samplePointer(1000),
            volumeTable: (0..<tables).map { samplePointer(UInt64($0)) }, nextVolumeID: VolumeID(rawValue: 513))
    }

    @Test func roundTrip() throws {
        for tables in [0, 1, 17, 32] {
            for depth: UInt16 in [1, 3, 6] {
                let original = object(tables: tables, depth: depth)
                let bytes = original.encoded()
                #expect(bytes.count == 4096)
                #expect(try PoolObject(decoding: bytes) == original)
            }
        }
    }

    @Test func layout() {
        let original = object(tables: 2)
        let bytes = original.encoded()
        #expect(littleEndian(UInt64.self, bytes, at: 0) == magicNumber("BULKPOOL"))
        #expect(littleEndian(UInt16.self, bytes, at: 8) == 1)
        #expect(littleEndian(UInt16.self, bytes, at: 10) == 2)
        #expect(littleEndian(UInt32.self, bytes, at: 12) == 513)
        #expect(littleEndian(UInt64.self, bytes, at: 16) == 1 << 30)
        #expect(littleEndian(UInt16.self, bytes, at: 24) == 2)
        #expect(Array(bytes[64..<128]) == original.spaceMapRoot.encoded())
        #expect(Array(bytes[256..<320]) == original.volumeTable[0].encoded())
        #expect(Array(bytes[320..<384]) == original.volumeTable[1].encoded())
        #expect(bytes[384...].allSatisfy { $0 == 0 })
    }

    @Test func depthBounds() {
        for depth: UInt16 in [0, 7, .max] {
            var bytes = object(tables: 1).encoded()
            store(depth, into: &bytes, at: 24)
            #expect(
                formatError { () throws(FormatError) in try PoolObject(decoding: bytes) }
                    == .fieldOutOfRange(structure: "pool object", field: "space map depth", value: UInt64(depth)))
        }
    }

    @Test func tableCountBounds() throws {
        for count: UInt16 in [33, 64, .max] {
            var bytes = object(tables: 32).encoded()
            store(count, into: &bytes, at: 10)
            #expect(
                formatError { () throws(FormatError) in try PoolObject(decoding: bytes) }
                    == .fieldOutOfRange(structure: "pool object", field: "volume table blocks", value: UInt64(count)))
        }
        // A count larger than the pointers present reads null pointers.
        var longer = object(tables: 1).encoded()
        store(UInt16(3), into: &longer, at: 10)
        #expect(try PoolObject(decoding: longer).volumeTable == [samplePointer(0), .null, .null])
    }

    @Test func pointersChecked() {
        var root = object(tables: 1).encoded()
        root[64 + 56] = 1
        #expect(formatError { () throws(FormatError) in try PoolObject(decoding: root) } == .nonZeroReserved(structure: "block pointer", offset: 120))
        var table = object(tables: 4).encoded()
        table[256 + 3 * 64 + 63] = 1
        #expect(
            formatError { () throws(FormatError) in try PoolObject(decoding: table) }
                == .nonZeroReserved(structure: "block pointer", offset: 256 + 3 * 64 + 63))
    }

    @Test func magicVersionAndSize() {
        var magic = object(tables: 0).encoded()
        magic[5] = 0
        #expect(
            formatError { () throws(FormatError) in try PoolObject(decoding: magic) }
                == .badMagic(structure: "pool object", found: littleEndian(UInt64.self, magic, at: 0)))
        var version = object(tables: 0).encoded()
        store(UInt16(2), into: &version, at: 8)
        #expect(formatError { () throws(FormatError) in try PoolObject(decoding: version) } == .unsupportedVersion(structure: "pool object", found: 2))
        for size in wrongBlockSizes {
            #expect(
                formatError { () throws(FormatError) in try PoolObject(decoding: [UInt8](repeating: 0, count: size)) }
                    == .wrongSize(structure: "pool object", expected: 4096, found: size))
        }
    }
}

@Suite struct VolumeTableTests {
    func record(_ id: UInt32, name: String = "vm", depth: UInt16 = 3) -> VolumeRecord {
        VolumeRecord(
            id: VolumeID(rawValue: id), name: name, size: UInt64(id) << 30, depth: depth,
            root: id % 2 == 0 ? .null : samplePointer(UInt64(id)), key: patterned(32, seed: UInt64(id)))
    }

    @Test func roundTrip() throws {
        let names = ["a", "vm-1", "data_disk.img", String(repeating: "x", count: 64), "ünïcødé"]
        let full = VolumeTableBlock(volumes: (1...16).map { record(UInt32($0), name: names[$0 % names.count], depth: UInt16($0 % 7)) })
        #expect(try VolumeTableBlock(decoding: full.encoded()) == full)
        let empty = VolumeTableBlock(volumes: [])
        #expect(empty.encoded() == [UInt8](repeating: 0, count: 4096))
        #expect(try VolumeTableBlock(decoding: empty.encoded()) == empty)
    }

    @Test func layout() {
        let original = record(5, name: "disk")
        let bytes = VolumeTableBlock(volumes: [record(2), original]).encoded()
        let offset = 256
        #expect(littleEndian(UInt32.self, bytes, at: offset) == 5)
        #expect(littleEndian(UInt64.self, bytes, at: offset + 8) == 5 << 30)
        #expect(littleEndian(UInt16.self, bytes, at: offset + 16) == 3)
        #expect(littleEndian(UInt16.self, bytes, at: offset + 18) == 4)
        #expect(Array(bytes[(offset + 24)..<(offset + 28)]) == Array("disk".utf8))
        #expect(Array(bytes[(offset + 88)..<(offset + 152)]) == original.root.encoded())
        #expect(Array(bytes[(offset + 152)..<(offset + 184)]) == original.key)
    }

    @Test func emptyRecordsAreSkipped() throws {
        var bytes = VolumeTableBlock(volumes: [record(1), record(2), record(3)]).encoded()
        store(UInt32(0), into: &bytes, at: 256)  // clear the ID of the second record
        #expect(try VolumeTableBlock(decoding: bytes).volumes.map(\.id.rawValue) == [1, 3])
    }

    @Test func nameLengthBound() throws {
        var longest = VolumeTableBlock(volumes: [record(1)]).encoded()
        store(UInt16(64), into: &longest, at: 18)
        #expect(try VolumeTableBlock(decoding: longest).volumes[0].name.utf8.count == 64)
        for length: UInt16 in [65, 200, .max] {
            var bytes = VolumeTableBlock(volumes: [record(1)]).encoded()
            store(length, into: &bytes, at: 18)
            #expect(
                formatError { () throws(FormatError) in try VolumeTableBlock(decoding: bytes) }
                    == .fieldOutOfRange(structure: "volume table", field: "name length", value: UInt64(length)))
        }
    }

    @Test func depthBound() {
        for depth: UInt16 in [7, 64, .max] {
            var bytes = VolumeTableBlock(volumes: [record(1), record(2)]).encoded()
            store(depth, into: &bytes, at: 256 + 16)
            #expect(
                formatError { () throws(FormatError) in try VolumeTableBlock(decoding: bytes) }
                    == .fieldOutOfRange(structure: "volume table", field: "depth", value: UInt64(depth)))
        }
    }

    @Test func sizeAlignment() {
        for size: UInt64 in [1, 4095, 4097, (1 << 30) + 512] {
            var bytes = VolumeTableBlock(volumes: [record(1)]).encoded()
            store(size, into: &bytes, at: 8)
            #expect(
                formatError { () throws(FormatError) in try VolumeTableBlock(decoding: bytes) }
                    == .fieldOutOfRange(structure: "volume table", field: "size", value: size))
        }
    }

    @Test func rootPointerChecked() {
        var bytes = VolumeTableBlock(volumes: [record(1)]).encoded()
        bytes[88 + 58] = 1
        #expect(formatError { () throws(FormatError) in try VolumeTableBlock(decoding: bytes) } == .nonZeroReserved(structure: "block pointer", offset: 146))
    }

    @Test func wrongSizesThrow() {
        for size in wrongBlockSizes {
            #expect(
                formatError { () throws(FormatError) in try VolumeTableBlock(decoding: [UInt8](repeating: 0, count: size)) }
                    == .wrongSize(structure: "volume table", expected: 4096, found: size))
        }
    }
}
