/// Bytes received from a peer and not yet decoded. Decoders peek at
/// fixed-size headers and consume them only when a whole message is present,
/// so input may arrive in any split: one byte at a time, whole, or batched.
///
/// A socket read can land straight in the buffer's room (`receive(upTo:_:)`):
/// a read into a buffer of its own and then an append copied every byte
/// once more, 2-5% of the crypt domain's CPU on READ replies.
public struct InputBuffer: Sendable {
    /// Initialised all through: bytes from `endIndex` on are room for the
    /// next receive, zeroed when the storage grows and reused after.
    private var storage: [UInt8] = []
    private var readIndex = 0
    private var endIndex = 0

    public init() {}

    /// Bytes available to decode.
    public var count: Int { endIndex - readIndex }
    public var isEmpty: Bool { count == 0 }

    public mutating func append(contentsOf bytes: some Sequence<UInt8>) {
        Array(bytes).withUnsafeBytes { append($0) }
    }

    public mutating func append(_ bytes: UnsafeRawBufferPointer) {
        guard !bytes.isEmpty else { return }
        makeRoom(bytes.count)
        let end = endIndex
        storage.withUnsafeMutableBytes { room in
            // SAFETY: makeRoom left at least bytes.count bytes from `end` on.
            UnsafeMutableRawBufferPointer(rebasing: room[end..<(end + bytes.count)]).copyMemory(from: bytes)
        }
        endIndex += bytes.count
    }

    /// Lets `fill` write up to `maximum` bytes straight after the bytes
    /// held (a socket read), keeping as many as it returns.
    /// - Precondition: `fill` returns a count from 0 to `maximum`.
    public mutating func receive<E: Error>(upTo maximum: Int, _ fill: (UnsafeMutableRawBufferPointer) throws(E) -> Int) throws(E) -> Int {
        precondition(maximum > 0)
        makeRoom(maximum)
        let end = endIndex
        var result: Result<Int, E> = .success(0)
        storage.withUnsafeMutableBytes { room in
            do throws(E) {
                result = .success(try fill(UnsafeMutableRawBufferPointer(rebasing: room[end..<(end + maximum)])))
            } catch {
                result = .failure(error)
            }
        }
        let received = try result.get()
        precondition(received >= 0 && received <= maximum, "more bytes received than there was room for")
        endIndex += received
        return received
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

    /// Makes room for `needed` more bytes after those held: first by
    /// moving the unread bytes down when most of the storage is read (in
    /// place: a new array at this size would be a fresh mapping, populated
    /// under mlockall, for every compaction), then by growing the storage.
    private mutating func makeRoom(_ needed: Int) {
        if readIndex == endIndex {
            readIndex = 0
            endIndex = 0
        } else if readIndex >= 64 * 1024 && readIndex * 2 >= endIndex || storage.count - endIndex < needed && readIndex > 0 {
            let remaining = endIndex - readIndex
            let start = readIndex
            storage.withUnsafeMutableBytes { bytes in
                // SAFETY: both ranges lie inside `bytes`; copyMemory is a memmove.
                bytes.baseAddress!.copyMemory(from: bytes.baseAddress! + start, byteCount: remaining)
            }
            readIndex = 0
            endIndex = remaining
        }
        let missing = needed - (storage.count - endIndex)
        if missing > 0 { storage.append(contentsOf: repeatElement(0, count: max(missing, storage.count))) }
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
            // SAFETY: start + destination.count <= endIndex, checked above.
            destination.copyMemory(from: UnsafeRawBufferPointer(rebasing: source[start..<(start + destination.count)]))
        }
        readIndex += destination.count
    }

    /// Lets `body` see the next `length` bytes where they lie, then
    /// consumes them, whether or not `body` throws.
    public mutating func consume<R, E: Error>(_ length: Int, _ body: (UnsafeRawBufferPointer) throws(E) -> R) throws(E) -> R {
        precondition(length >= 0 && length <= count)
        let start = readIndex
        readIndex += length
        var result: Result<R, E>!
        storage.withUnsafeBytes { bytes in
            do throws(E) {
                // SAFETY: start + length <= endIndex, checked above.
                result = .success(try body(UnsafeRawBufferPointer(rebasing: bytes[start..<(start + length)])))
            } catch {
                result = .failure(error)
            }
        }
        return try result.get()
    }
}
