/// A structure read from the pool does not decode. The storage side is
/// untrusted, so every one of these is reported, never trapped on.
public enum FormatError: Error, Sendable, Equatable, CustomStringConvertible {
    case wrongSize(structure: String, expected: Int, found: Int)
    case badMagic(structure: String, found: UInt64)
    case unsupportedVersion(structure: String, found: UInt16)
    case fieldOutOfRange(structure: String, field: String, value: UInt64)
    case nonZeroReserved(structure: String, offset: Int)

    public var description: String {
        switch self {
        case .wrongSize(let structure, let expected, let found): "\(structure): \(found) bytes, expected \(expected)"
        case .badMagic(let structure, let found): "\(structure): bad magic 0x\(String(found, radix: 16))"
        case .unsupportedVersion(let structure, let found): "\(structure): unsupported format version \(found)"
        case .fieldOutOfRange(let structure, let field, let value): "\(structure): \(field) \(value) out of range"
        case .nonZeroReserved(let structure, let offset): "\(structure): reserved byte at \(offset) is not zero"
        }
    }
}

/// Eight ASCII bytes read as a little-endian integer, for magics.
func magic(_ text: StaticString) -> UInt64 {
    precondition(text.utf8CodeUnitCount == 8)
    var value: UInt64 = 0
    for index in (0..<8).reversed() {
        value = value << 8 | UInt64(text.utf8Start[index])
    }
    return value
}

/// Checks the frame every versioned block shares: a whole block, the
/// structure's magic in bytes 0..<8 and the format version in bytes 8..<10.
func framedReader(_ block: [UInt8], structure: String, magic expected: UInt64) throws(FormatError) -> ByteReader {
    guard block.count == PoolLayout.blockSize else {
        throw .wrongSize(structure: structure, expected: PoolLayout.blockSize, found: block.count)
    }
    let reader = ByteReader(bytes: block)
    let found = reader.get(UInt64.self, at: 0)
    guard found == expected else { throw .badMagic(structure: structure, found: found) }
    let version = reader.get(UInt16.self, at: 8)
    guard version == PoolLayout.formatVersion else { throw .unsupportedVersion(structure: structure, found: version) }
    return reader
}
