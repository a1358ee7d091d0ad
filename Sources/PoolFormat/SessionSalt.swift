/// A session's random salt (docs/format.md, section 4): drawn at every open
/// and at every rollover, recorded in each pointer it sealed, never secret.
/// Keys derive from it, so a fresh salt means fresh keys and fresh nonces.
/// Held inline, like the tag, so block pointers are plain values.
public struct SessionSalt: Hashable, Sendable {
    public static let length = Bytes16.length
    @usableFromInline var value: Bytes16

    @inlinable init(value: Bytes16) { self.value = value }

    public init(bytes: [UInt8]) { value = Bytes16(bytes: bytes) }

    public var bytes: [UInt8] { value.bytes }

    @inlinable public func withUnsafeBytes<R, E: Error>(_ body: (UnsafeRawBufferPointer) throws(E) -> R) throws(E) -> R {
        try value.withUnsafeBytes(body)
    }

    public static let zero = SessionSalt(bytes: [UInt8](repeating: 0, count: length))

    public static func generate() -> SessionSalt {
        var generator = SystemRandomNumberGenerator()
        return SessionSalt(bytes: (0..<length).map { _ in generator.next() })
    }
}
