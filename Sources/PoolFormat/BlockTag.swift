/// The 16-byte AES-GCM tag that authenticates a sealed block, as stored in
/// its block pointer (docs/format.md, sections 4 and 5). Held inline:
/// writing a block creates one per block, so it must not allocate.
public struct BlockTag: Sendable, Hashable, CustomStringConvertible {
    public static let length = Bytes16.length
    @usableFromInline var value: Bytes16

    /// All zeroes: the tag of the null pointer, and the buffer a seal writes into.
    public static let zero = BlockTag(value: .zero)

    @inlinable init(value: Bytes16) { self.value = value }

    /// A tag from exactly 16 bytes.
    @inlinable public init(bytes: UnsafeRawBufferPointer) { value = Bytes16(bytes: bytes) }

    /// A tag from exactly 16 bytes.
    public init(bytes: some Collection<UInt8>) { value = Bytes16(bytes: bytes) }

    /// The bytes, for display and comparison with other forms.
    public var bytes: [UInt8] { value.bytes }

    public var description: String { bytes.map { String($0, radix: 16) }.map { $0.count == 1 ? "0" + $0 : $0 }.joined() }

    @inlinable public func withUnsafeBytes<R, E: Error>(_ body: (UnsafeRawBufferPointer) throws(E) -> R) throws(E) -> R {
        try value.withUnsafeBytes(body)
    }

    /// The tag's own storage, for a seal to write the tag into.
    @inlinable public mutating func withUnsafeMutableBytes<R, E: Error>(_ body: (UnsafeMutableRawBufferPointer) throws(E) -> R) throws(E) -> R {
        try value.withUnsafeMutableBytes(body)
    }
}
