/// Builds a little-endian byte image of fixed size.
struct ByteWriter {
    private(set) var bytes: [UInt8]

    init(size: Int) { bytes = [UInt8](repeating: 0, count: size) }

    mutating func put<T: FixedWidthInteger>(_ value: T, at offset: Int) {
        precondition(offset >= 0 && offset + MemoryLayout<T>.size <= bytes.count)
        bytes.withUnsafeMutableBytes { $0.storeBytes(of: value.littleEndian, toByteOffset: offset, as: T.self) }
    }

    mutating func put(_ data: UnsafeRawBufferPointer, at offset: Int) {
        precondition(offset >= 0 && offset + data.count <= bytes.count)
        bytes.withUnsafeMutableBytes { UnsafeMutableRawBufferPointer(rebasing: $0[offset..<(offset + data.count)]).copyMemory(from: data) }
    }

    mutating func put(_ data: [UInt8], at offset: Int) {
        data.withUnsafeBytes { put($0, at: offset) }
    }
}

/// Reads a little-endian byte image whose size the caller has checked.
struct ByteReader {
    let bytes: [UInt8]

    func get<T: FixedWidthInteger>(_: T.Type, at offset: Int) -> T {
        precondition(offset >= 0 && offset + MemoryLayout<T>.size <= bytes.count)
        return T(littleEndian: bytes.withUnsafeBytes { $0.loadUnaligned(fromByteOffset: offset, as: T.self) })
    }

    func slice(_ offset: Int, _ length: Int) -> [UInt8] {
        precondition(offset >= 0 && offset + length <= bytes.count)
        return Array(bytes[offset..<(offset + length)])
    }

    /// Sixteen bytes as stored (a salt or a tag).
    func bytes16(at offset: Int) -> Bytes16 {
        precondition(offset >= 0 && offset + Bytes16.length <= bytes.count)
        return bytes.withUnsafeBytes { Bytes16(bytes: UnsafeRawBufferPointer(rebasing: $0[offset..<(offset + Bytes16.length)])) }
    }

    /// The offset of the first non-zero byte in `range`, if any.
    func firstNonZero(in range: Range<Int>) -> Int? {
        precondition(range.lowerBound >= 0 && range.upperBound <= bytes.count)
        return bytes.withUnsafeBytes { $0[range].firstIndex { $0 != 0 } }
    }
}
