import PoolFormat

/// Deterministic bytes: a small linear congruential generator, so every
/// run of the suite sees the same structures.
func patterned(_ count: Int, seed: UInt64) -> [UInt8] {
    var state = seed &* 0x9E37_79B9_7F4A_7C15 &+ 1
    return (0..<count).map { _ in
        state = state &* 6_364_136_223_846_793_005 &+ 1_442_695_040_888_963_407
        return UInt8(truncatingIfNeeded: state >> 33)
    }
}

/// A non-null pointer whose every field differs from every other sample's.
func samplePointer(_ seed: UInt64) -> BlockPointer {
    BlockPointer(
        block: 1000 + seed, salt: SessionSalt(bytes: patterned(16, seed: seed)), counter: NonceCounter(rawValue: 7 + seed),
        generation: 99 + seed, tag: BlockTag(bytes: patterned(16, seed: seed + 500)))
}

let samplePoolID = patterned(16, seed: 42)

/// Reads a little-endian integer out of an encoded structure.
func littleEndian<T: FixedWidthInteger>(_: T.Type, _ bytes: [UInt8], at offset: Int) -> T {
    var value: T = 0
    for index in (offset..<(offset + MemoryLayout<T>.size)).reversed() { value = value << 8 | T(bytes[index]) }
    return value
}

/// Writes a little-endian integer into an encoded structure.
func store<T: FixedWidthInteger>(_ value: T, into bytes: inout [UInt8], at offset: Int) {
    for index in 0..<MemoryLayout<T>.size { bytes[offset + index] = UInt8(truncatingIfNeeded: value >> (8 * index)) }
}

/// Eight ASCII characters as the little-endian magic number the decoders report.
func magicNumber(_ text: String) -> UInt64 { littleEndian(UInt64.self, Array(text.utf8), at: 0) }

/// Runs a decoder and returns the FormatError it threw, or nil if it did not throw.
func formatError<T>(_ body: () throws(FormatError) -> T) -> FormatError? {
    do {
        _ = try body()
        return nil
    } catch {
        return error
    }
}

/// Sizes a decoder of whole blocks must refuse.
let wrongBlockSizes = [0, 1, 63, 64, 4095, 4097, 8192]
