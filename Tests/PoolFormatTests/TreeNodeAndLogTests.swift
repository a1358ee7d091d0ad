import PoolFormat
import Testing

@Suite struct TreeNodeTests {
    @Test func roundTrip() throws {
        var node = TreeNode()
        #expect(node.isEmpty)
        #expect(node.encoded() == [UInt8](repeating: 0, count: 4096))
        #expect(try TreeNode(decoding: node.encoded()) == node)
        for index in stride(from: 0, to: 64, by: 5) { node.children[index] = samplePointer(UInt64(index)) }
        node.children[63] = samplePointer(63)
        #expect(!node.isEmpty)
        let bytes = node.encoded()
        #expect(try TreeNode(decoding: bytes) == node)
        for index in 0..<64 { #expect(Array(bytes[(index * 64)..<(index * 64 + 64)]) == node.children[index].encoded()) }
    }

    @Test func childReservedBytesAndNullGarbageRefused() {
        var node = TreeNode()
        node.children[0] = samplePointer(1)
        var reserved = node.encoded()
        reserved[63 * 64 + 60] = 1
        #expect(formatError { () throws(FormatError) in try TreeNode(decoding: reserved) } == .nonZeroReserved(structure: "block pointer", offset: 63 * 64 + 60))
        var nullGarbage = node.encoded()
        nullGarbage[10 * 64 + 40] = 1  // a tag byte in a null child
        #expect(
            formatError { () throws(FormatError) in try TreeNode(decoding: nullGarbage) }
                == .nonZeroReserved(structure: "null block pointer", offset: 10 * 64 + 40))
    }

    @Test func wrongSizesThrow() {
        for size in wrongBlockSizes {
            #expect(
                formatError { () throws(FormatError) in try TreeNode(decoding: [UInt8](repeating: 0, count: size)) }
                    == .wrongSize(structure: "tree node", expected: 4096, found: size))
        }
    }
}

@Suite struct LogBlockTests {
    static let recordsOffset = 96

    func records(_ count: Int) -> [LogRecord] {
        (0..<count).map { (index: Int) -> LogRecord in
            let volume = VolumeID(rawValue: UInt32(index + 1))
            switch index % 3 {
            case 2:
                return .unmap(volume: volume, start: LogicalBlock(UInt64(index) * 1000), count: UInt64(index + 1))
            case 1:
                return .map(volume: volume, block: LogicalBlock(UInt64(index) << 20), pointer: .null)
            default:
                return .map(volume: volume, block: LogicalBlock(UInt64(index) << 20), pointer: samplePointer(UInt64(index)))
            }
        }
    }

    @Test func roundTrip() throws {
        for count in [1, 2, 49, 50] {
            let block = LogBlock(sequence: UInt64(count) * 7, previous: count == 1 ? .null : samplePointer(99), records: records(count))
            let bytes = block.encoded()
            #expect(bytes.count == 4096)
            #expect(try LogBlock(decoding: bytes) == block)
            #expect(littleEndian(UInt64.self, bytes, at: 0) == magicNumber("BULKLOG1"))
            #expect(littleEndian(UInt16.self, bytes, at: 10) == UInt16(count))
            #expect(littleEndian(UInt64.self, bytes, at: 16) == UInt64(count) * 7)
            #expect(Array(bytes[32..<96]) == block.previous.encoded())
        }
    }

    @Test func recordLayout() {
        let pointer = samplePointer(5)
        let bytes = LogBlock(
            sequence: 0, previous: .null,
            records: [
                .map(volume: VolumeID(rawValue: 7), block: LogicalBlock(0x1122), pointer: pointer),
                .unmap(volume: VolumeID(rawValue: 8), start: LogicalBlock(9), count: 300),
            ]
        ).encoded()
        let first = Self.recordsOffset
        #expect(littleEndian(UInt16.self, bytes, at: first) == 1)
        #expect(littleEndian(UInt32.self, bytes, at: first + 4) == 7)
        #expect(littleEndian(UInt64.self, bytes, at: first + 8) == 0x1122)
        #expect(Array(bytes[(first + 16)..<(first + 80)]) == pointer.encoded())
        let second = first + 80
        #expect(littleEndian(UInt16.self, bytes, at: second) == 2)
        #expect(littleEndian(UInt32.self, bytes, at: second + 4) == 8)
        #expect(littleEndian(UInt64.self, bytes, at: second + 8) == 9)
        #expect(littleEndian(UInt64.self, bytes, at: second + 16) == 300)
        #expect(bytes[(second + 24)...].allSatisfy { $0 == 0 })
    }

    @Test func recordCountBounds() {
        for count: UInt16 in [0, 51, 52, .max] {
            var bytes = LogBlock(sequence: 0, previous: .null, records: records(50)).encoded()
            store(count, into: &bytes, at: 10)
            #expect(
                formatError { () throws(FormatError) in try LogBlock(decoding: bytes) }
                    == .fieldOutOfRange(structure: "log block", field: "record count", value: UInt64(count)))
        }
    }

    @Test func unknownRecordType() {
        for type: UInt16 in [0, 3, 0xFFFF] {
            var bytes = LogBlock(sequence: 0, previous: .null, records: records(3)).encoded()
            store(type, into: &bytes, at: Self.recordsOffset + 80)
            #expect(
                formatError { () throws(FormatError) in try LogBlock(decoding: bytes) }
                    == .fieldOutOfRange(structure: "log record", field: "type", value: UInt64(type)))
        }
    }

    @Test func recordReservedBytes() {
        let base = LogBlock(sequence: 0, previous: .null, records: records(3)).encoded()
        // Bytes 2..<4 of every record: one reserved 16-bit field, reported at its start.
        for offset in [2, 3] {
            var bytes = base
            bytes[Self.recordsOffset + 80 + offset] = 1
            #expect(
                formatError { () throws(FormatError) in try LogBlock(decoding: bytes) }
                    == .nonZeroReserved(structure: "log record", offset: Self.recordsOffset + 80 + 2))
        }
        // An unmap record's body after the count (record 2 is an unmap).
        let unmap = Self.recordsOffset + 2 * 80
        for offset in 24..<80 {
            var bytes = base
            bytes[unmap + offset] = 0x40
            #expect(
                formatError { () throws(FormatError) in try LogBlock(decoding: bytes) }
                    == .nonZeroReserved(structure: "log record", offset: unmap + offset))
        }
        // A map record's pointer reserved bytes.
        var pointerReserved = base
        pointerReserved[Self.recordsOffset + 16 + 57] = 1
        #expect(
            formatError { () throws(FormatError) in try LogBlock(decoding: pointerReserved) }
                == .nonZeroReserved(structure: "block pointer", offset: Self.recordsOffset + 16 + 57))
        // The previous pointer's reserved bytes.
        var previous = base
        previous[32 + 63] = 1
        #expect(formatError { () throws(FormatError) in try LogBlock(decoding: previous) } == .nonZeroReserved(structure: "block pointer", offset: 95))
    }

    @Test func zeroUnmapCountRefused() {
        var bytes = LogBlock(sequence: 0, previous: .null, records: records(3)).encoded()
        store(UInt64(0), into: &bytes, at: Self.recordsOffset + 2 * 80 + 16)
        #expect(
            formatError { () throws(FormatError) in try LogBlock(decoding: bytes) }
                == .fieldOutOfRange(structure: "log record", field: "unmap count", value: 0))
    }

    @Test func magicVersionAndSize() {
        let base = LogBlock(sequence: 0, previous: .null, records: records(1)).encoded()
        var magic = base
        magic[0] ^= 0x20
        #expect(
            formatError { () throws(FormatError) in try LogBlock(decoding: magic) }
                == .badMagic(structure: "log block", found: littleEndian(UInt64.self, magic, at: 0)))
        var version = base
        store(UInt16(0), into: &version, at: 8)
        #expect(formatError { () throws(FormatError) in try LogBlock(decoding: version) } == .unsupportedVersion(structure: "log block", found: 0))
        for size in wrongBlockSizes {
            #expect(
                formatError { () throws(FormatError) in try LogBlock(decoding: [UInt8](repeating: 0, count: size)) }
                    == .wrongSize(structure: "log block", expected: 4096, found: size))
        }
    }
}
