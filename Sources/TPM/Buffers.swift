import CTSS2

// The TPM2B_* structures hold a size and a fixed C array, which Swift sees
// as a tuple. These helpers copy between such tuples and byte arrays,
// checking that the bytes fit.

/// Copies `bytes` into the fixed array `tuple`, returning false if they do not fit.
func store<Tuple>(_ bytes: some Collection<UInt8>, into tuple: inout Tuple) -> Bool {
    withUnsafeMutableBytes(of: &tuple) { raw in
        guard bytes.count <= raw.count else { return false }
        raw.copyBytes(from: bytes)
        return true
    }
}

/// The first `count` bytes of the fixed array `tuple` (clamped to its size).
func load<Tuple>(_ count: Int, from tuple: Tuple) -> [UInt8] {
    withUnsafeBytes(of: tuple) { raw in Array(raw.prefix(max(0, count))) }
}

// TPM2B_AUTH is the same C type as TPM2B_DIGEST.
extension TPM2B_DIGEST {
    init(bytes: [UInt8]) throws(TPMError) {
        self.init()
        guard store(bytes, into: &buffer) else { throw .invalidArgument("digest of \(bytes.count) bytes") }
        size = UInt16(bytes.count)
    }

    var bytes: [UInt8] { load(Int(size), from: buffer) }
}

extension TPM2B_NAME {
    var bytes: [UInt8] { load(Int(size), from: name) }
}

/// Big-endian appends and reads for the blob format.
extension Array where Element == UInt8 {
    mutating func appendBigEndian<T: FixedWidthInteger>(_ value: T) {
        for shift in stride(from: T.bitWidth - 8, through: 0, by: -8) {
            append(UInt8(truncatingIfNeeded: value >> shift))
        }
    }
}
