import Threads

/// Large buffers kept for reuse instead of going back to malloc. The crypt
/// daemon maps every allocation from 128 KiB up on its own (its malloc
/// threshold), so that freed large buffers never sit in the heap for small
/// allocations to split; a buffer needed for every large request is
/// therefore kept here, saving a mapping (populated and locked under
/// mlockall) and an unmapping per request.
// SAFETY: the cache owns the buffers it holds; `take` hands one to exactly
// one owner, which gives it back with `give` or deallocates it.
final class BufferCache: @unchecked Sendable {
    /// Buffers smaller than this come from malloc's heap as usual.
    static let smallestCached = 128 << 10
    /// Buffers larger than this are not kept.
    static let largestCached = 8 << 20

    private struct Spare {
        var buffers: [UnsafeMutableRawBufferPointer] = []
        var bytes = 0
    }

    private let spare = Guarded(Spare())
    /// Bytes of idle buffers kept at most.
    let retainedBytes: Int
    let alignment: Int

    init(retainedBytes: Int, alignment: Int) {
        self.retainedBytes = retainedBytes
        self.alignment = alignment
    }

    deinit {
        spare.withLock { spare in for buffer in spare.buffers { buffer.deallocate() } }
    }

    /// A buffer of at least `count` bytes (exactly `count` if not cached),
    /// not initialised.
    func take(_ count: Int) -> UnsafeMutableRawBufferPointer {
        guard let size = Self.cachedSize(count) else { return .allocate(byteCount: count, alignment: alignment) }
        let reused = spare.withLock { spare -> UnsafeMutableRawBufferPointer? in
            guard let index = spare.buffers.lastIndex(where: { $0.count == size }) else { return nil }
            spare.bytes -= size
            return spare.buffers.remove(at: index)
        }
        return reused ?? .allocate(byteCount: size, alignment: alignment)
    }

    /// Gives back a buffer from `take`: kept if it is of a cached size,
    /// the oldest idle buffers freed to make room for it.
    func give(_ buffer: UnsafeMutableRawBufferPointer) {
        guard Self.cachedSize(buffer.count) == buffer.count, buffer.count <= retainedBytes else { return buffer.deallocate() }
        let evicted = spare.withLock { spare -> [UnsafeMutableRawBufferPointer] in
            var evicted: [UnsafeMutableRawBufferPointer] = []
            while let oldest = spare.buffers.first, spare.bytes + buffer.count > retainedBytes {
                spare.buffers.removeFirst()
                spare.bytes -= oldest.count
                evicted.append(oldest)
            }
            spare.buffers.append(buffer)
            spare.bytes += buffer.count
            return evicted
        }
        for old in evicted { old.deallocate() }
    }

    /// Idle buffers and their bytes, for tests.
    var idle: (count: Int, bytes: Int) { spare.withLock { ($0.buffers.count, $0.bytes) } }

    /// Cached buffers come in powers of two, so that requests of nearby
    /// sizes share them; nil for sizes not cached.
    private static func cachedSize(_ count: Int) -> Int? {
        guard count >= smallestCached, count <= largestCached else { return nil }
        var size = smallestCached
        while size < count { size <<= 1 }
        return size
    }
}
