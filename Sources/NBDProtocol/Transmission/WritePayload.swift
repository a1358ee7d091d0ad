/// Where WRITE payload memory comes from and goes back to: a server that
/// receives large WRITEs keeps their buffers for the next ones instead of
/// mapping and unmapping each (under mlockall every new mapping is also
/// populated and zeroed, page by page).
public protocol PayloadMemory: AnyObject, Sendable {
    /// Uninitialized memory of at least `count` bytes at an address that
    /// is a multiple of `alignment` (a power of two).
    func take(count: Int, alignment: Int) -> UnsafeMutableRawBufferPointer
    /// Gives back a buffer `take` returned, whole; nobody uses it afterwards.
    func give(_ buffer: UnsafeMutableRawBufferPointer)
}

/// The payload of an NBD_CMD_WRITE request (proto.md, "NBD_CMD_WRITE") as
/// the `RequestDecoder` hands it over: memory it allocates and fills once,
/// never changes afterwards, and frees (or gives back to its
/// `PayloadMemory`) when the last reference goes. Its address is fixed for
/// the object's whole life, so a device writing from `unsafeBytes`
/// asynchronously needs only to hold the payload until it is done.
// SAFETY: the bytes are written only by the decoder, before the payload is
// handed out; from then on they are read-only, so sharing across threads
// is safe.
public final class WritePayload: @unchecked Sendable {
    /// The payload of every request other than an accepted WRITE.
    public static let empty = WritePayload(count: 0, alignment: 1)

    /// The payload's bytes: the first `count` of `allocation`.
    private let storage: UnsafeMutableRawBufferPointer
    private let allocation: UnsafeMutableRawBufferPointer
    private let memory: (any PayloadMemory)?

    /// Uninitialized memory for `count` bytes at an address that is a
    /// multiple of `alignment` (a power of two), from `memory` if given;
    /// the decoder fills it all before handing the payload out.
    init(count: Int, alignment: Int, memory: (any PayloadMemory)? = nil) {
        if let memory {
            allocation = memory.take(count: count, alignment: alignment)
            precondition(allocation.count >= count && Int(bitPattern: allocation.baseAddress) & (alignment - 1) == 0)
        } else {
            allocation = .allocate(byteCount: count, alignment: alignment)
        }
        storage = UnsafeMutableRawBufferPointer(rebasing: allocation[..<count])
        self.memory = memory
    }

    deinit {
        if let memory { memory.give(allocation) } else { allocation.deallocate() }
    }

    /// The memory the decoder fills, before anyone else sees the payload.
    var fillableBytes: UnsafeMutableRawBufferPointer { storage }

    /// The payload's bytes, valid for as long as this object lives: a
    /// caller that keeps the pointer beyond its own use of the payload must
    /// hold a reference to the payload as long as it uses the pointer.
    public var unsafeBytes: UnsafeRawBufferPointer { UnsafeRawBufferPointer(storage) }

    /// Calls `body` with the payload's bytes; the pointer must not escape.
    public func withUnsafeBytes<R, E: Error>(_ body: (UnsafeRawBufferPointer) throws(E) -> R) throws(E) -> R {
        defer { withExtendedLifetime(self) {} }
        return try body(unsafeBytes)
    }
}

extension WritePayload: RandomAccessCollection {
    public var startIndex: Int { 0 }
    public var endIndex: Int { storage.count }
    public subscript(position: Int) -> UInt8 {
        precondition(position >= 0 && position < storage.count, "index out of range")
        return unsafeBytes[position]
    }
}

extension WritePayload: Hashable {
    /// Payloads are equal when their bytes are.
    public static func == (lhs: WritePayload, rhs: WritePayload) -> Bool {
        lhs === rhs || lhs.unsafeBytes.elementsEqual(rhs.unsafeBytes)
    }

    public func hash(into hasher: inout Hasher) {
        hasher.combine(bytes: unsafeBytes)
    }
}
