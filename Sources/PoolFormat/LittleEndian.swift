/// Builds a little-endian byte image of fixed size.
struct ByteWriter {
    private(set) var bytes: [UInt8]

    init(size: Int) { bytes = [UInt8](repeating: 0, count: size) }

    mutating func put<T: FixedWidthInteger>(_ value: T, at offset: Int) {
        withUnsafeBytes(of: value.littleEndian) { raw in
            for index in 0..<raw.count { bytes[offset + index] = raw[index] }
        }
    }

    mutating func put(_ data: some Collection<UInt8>, at offset: Int) {
        precondition(offset + data.count <= bytes.count)
        var index = offset
        for byte in data {
            bytes[index] = byte
            index += 1
        }
    }
}

/// Reads a little-endian byte image whose size the caller has checked.
struct ByteReader {
    let bytes: [UInt8]

    func get<T: FixedWidthInteger>(_: T.Type, at offset: Int) -> T {
        precondition(offset >= 0 && offset + MemoryLayout<T>.size <= bytes.count)
        var value: T = 0
        for index in (offset..<(offset + MemoryLayout<T>.size)).reversed() {
            value = value << 8 | T(bytes[index])
        }
        return value
    }

    func slice(_ offset: Int, _ length: Int) -> [UInt8] {
        precondition(offset >= 0 && offset + length <= bytes.count)
        return Array(bytes[offset..<(offset + length)])
    }
}
