/// Bytes received from a peer and not yet decoded. Decoders peek at
/// fixed-size headers and consume them only when a whole message is present,
/// so input may arrive in any split: one byte at a time, whole, or batched.
public struct InputBuffer: Sendable {
    private var storage: [UInt8] = []
    private var readIndex = 0

    public init() {}

    /// Bytes available to decode.
    public var count: Int { storage.count - readIndex }
    public var isEmpty: Bool { count == 0 }

    public mutating func append(contentsOf bytes: some Sequence<UInt8>) {
        compactIfWorthwhile()
        storage.append(contentsOf: bytes)
    }

    public mutating func append(_ bytes: UnsafeRawBufferPointer) {
        compactIfWorthwhile()
        storage.append(contentsOf: bytes)
    }

    /// Reads a big-endian integer `offset` bytes past the read position.
    /// - Precondition: `offset + MemoryLayout<T>.size <= count`.
    public func peek<T: FixedWidthInteger>(_: T.Type, at offset: Int = 0) -> T {
        precondition(offset >= 0 && offset + MemoryLayout<T>.size <= count)
        var value: T = 0
        let start = readIndex + offset
        for index in start..<(start + MemoryLayout<T>.size) {
            value = value << 8 | T(storage[index])
        }
        return value
    }

    /// Removes and returns the next `length` bytes.
    public mutating func take(_ length: Int) -> [UInt8] {
        precondition(length >= 0 && length <= count)
        // Copied through a buffer pointer: an array made from a slice that
        // covers the whole storage shares it, so a payload that arrived
        // alone kept the (large) input buffer alive and the next append
        // had to allocate a new one.
        let start = readIndex
        let bytes = storage.withUnsafeBufferPointer { Array(UnsafeBufferPointer(rebasing: $0[start..<(start + length)])) }
        readIndex += length
        return bytes
    }

    /// Drops up to `length` bytes and returns how many were dropped.
    @discardableResult
    public mutating func skip(upTo length: Int) -> Int {
        let dropped = min(length, count)
        readIndex += dropped
        return dropped
    }

    /// Removes and returns everything not yet consumed.
    public mutating func takeAll() -> [UInt8] { take(count) }

    private mutating func compactIfWorthwhile() {
        if readIndex == storage.count {
            storage.removeAll(keepingCapacity: true)
            readIndex = 0
        } else if readIndex >= 64 * 1024 && readIndex * 2 >= storage.count {
            // Moved down in place: `removeFirst` built a new array, which
            // at this size is a fresh mapping (populated under mlockall)
            // for every compaction of a stream of small requests.
            let remaining = storage.count - readIndex
            let start = readIndex
            storage.withUnsafeMutableBytes { bytes in
                // SAFETY: both ranges lie inside `bytes`; copyMemory is a memmove.
                bytes.baseAddress!.copyMemory(from: bytes.baseAddress! + start, byteCount: remaining)
            }
            storage.removeLast(start)
            readIndex = 0
        }
    }
}

/// Big-endian serialisation helpers for outgoing messages.
extension Array where Element == UInt8 {
    @inlinable
    public mutating func appendBigEndian<T: FixedWidthInteger>(_ value: T) {
        var bigEndian = value.bigEndian
        Swift.withUnsafeBytes(of: &bigEndian) { append(contentsOf: $0) }
    }
}

/// Writes big-endian integers into raw memory, for headers placed in front
/// of payloads that are read straight into the same buffer.
extension UnsafeMutableRawBufferPointer {
    @inlinable
    public func storeBigEndian<T: FixedWidthInteger>(_ value: T, at offset: Int) {
        precondition(offset >= 0 && offset + MemoryLayout<T>.size <= count)
        storeBytes(of: value.bigEndian, toByteOffset: offset, as: T.self)
    }
}

/// Reads big-endian integers from a byte array at a given position; the
/// caller has checked that the bytes are present.
extension Array where Element == UInt8 {
    func bigEndian<T: FixedWidthInteger>(_: T.Type, at offset: Int) -> T {
        precondition(offset >= 0 && offset + MemoryLayout<T>.size <= count)
        var value: T = 0
        for index in offset..<(offset + MemoryLayout<T>.size) {
            value = value << 8 | T(self[index])
        }
        return value
    }
}

extension InputBuffer {
    /// Removes the next `destination.count` bytes, copying them into `destination`.
    /// - Precondition: `destination.count <= count`.
    public mutating func take(into destination: UnsafeMutableRawBufferPointer) {
        precondition(destination.count <= count)
        guard destination.count > 0 else { return }
        let start = readIndex
        storage.withUnsafeBytes { source in
            // SAFETY: start + destination.count <= storage.count, checked above.
            destination.copyMemory(from: UnsafeRawBufferPointer(rebasing: source[start..<(start + destination.count)]))
        }
        readIndex += destination.count
    }
}
