/// Sixteen bytes held inline, in memory order, for the salts and tags every
/// block pointer carries: copying one allocates nothing and counts no
/// references, so pointers are plain values.
@usableFromInline
struct Bytes16: Sendable, Hashable {
    @usableFromInline static let length = 16
    /// The bytes as two words in memory order (not little-endian values).
    @usableFromInline var words: (UInt64, UInt64)

    @usableFromInline static let zero = Bytes16(words: (0, 0))

    @inlinable init(words: (UInt64, UInt64)) { self.words = words }

    @inlinable init(bytes: UnsafeRawBufferPointer) {
        precondition(bytes.count == Self.length, "16 bytes expected, got \(bytes.count)")
        words = (bytes.loadUnaligned(fromByteOffset: 0, as: UInt64.self), bytes.loadUnaligned(fromByteOffset: 8, as: UInt64.self))
    }

    init(bytes: some Collection<UInt8>) {
        precondition(bytes.count == Self.length, "16 bytes expected, got \(bytes.count)")
        var value = Self.zero
        value.withUnsafeMutableBytes { target in
            for (index, byte) in bytes.enumerated() { target[index] = byte }
        }
        self = value
    }

    var bytes: [UInt8] { withUnsafeBytes { Array($0) } }

    @inlinable func withUnsafeBytes<R, E: Error>(_ body: (UnsafeRawBufferPointer) throws(E) -> R) throws(E) -> R {
        var copy = words
        // SAFETY: a tuple of two UInt64 is 16 contiguous bytes; the pointer
        // does not outlive the call.
        return try Swift.withUnsafeBytes(of: &copy) { (raw) throws(E) -> R in try body(raw) }
    }

    @inlinable mutating func withUnsafeMutableBytes<R, E: Error>(_ body: (UnsafeMutableRawBufferPointer) throws(E) -> R) throws(E) -> R {
        // SAFETY: as above; writes through the pointer land in `words`.
        try Swift.withUnsafeMutableBytes(of: &words) { (raw) throws(E) -> R in try body(raw) }
    }

    @inlinable static func == (lhs: Bytes16, rhs: Bytes16) -> Bool { lhs.words == rhs.words }

    @inlinable func hash(into hasher: inout Hasher) {
        hasher.combine(words.0)
        hasher.combine(words.1)
    }
}
