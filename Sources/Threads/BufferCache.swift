/// Buffers kept for reuse instead of going back to malloc. The crypt
/// daemon maps every allocation from 128 KiB up on its own (its malloc
/// threshold), so that freed large buffers never sit in the heap for small
/// allocations to split; a buffer needed for every large request is
/// therefore kept here, saving a mapping (populated and locked under
/// mlockall) and an unmapping per request. A cache may keep smaller
/// buffers too (`smallest`): an aligned heap allocation of a few KiB costs
/// glibc a consolidation of its fast bins, on every 4 KiB write.
// SAFETY: the cache owns the buffers it holds; `take` hands one to exactly
// one owner, which gives it back with `give` or deallocates it.
public final class BufferCache: @unchecked Sendable {
    /// Buffers smaller than this come from malloc's heap as usual, unless
    /// the cache is made with a smaller `smallest`.
    public static let smallestCached = 128 << 10
    /// Buffers larger than this are not kept.
    public static let largestCached = 8 << 20

    private struct Spare {
        /// Idle buffers by size class (`smallest << index`), oldest first.
        var bins: [[UnsafeMutableRawBufferPointer]]
        var bytes = 0
        var count = 0
    }

    private let spare: Guarded<Spare>
    /// Bytes of idle buffers kept at most.
    public let retainedBytes: Int
    public let alignment: Int
    /// The smallest size kept, a power of two.
    public let smallest: Int

    public init(retainedBytes: Int, alignment: Int, smallest: Int = BufferCache.smallestCached) {
        precondition(smallest > 0 && smallest & (smallest - 1) == 0 && smallest <= Self.largestCached)
        self.retainedBytes = retainedBytes
        self.alignment = alignment
        self.smallest = smallest
        let classes = Self.largestCached.trailingZeroBitCount - smallest.trailingZeroBitCount + 1
        spare = Guarded(Spare(bins: Array(repeating: [], count: classes)))
    }

    deinit {
        spare.withLock { spare in for bin in spare.bins { for buffer in bin { buffer.deallocate() } } }
    }

    /// A buffer of at least `count` bytes (exactly `count` if not cached),
    /// not initialised.
    public func take(_ count: Int) -> UnsafeMutableRawBufferPointer {
        guard let sizeClass = sizeClass(of: count) else { return .allocate(byteCount: count, alignment: alignment) }
        let size = smallest << sizeClass
        let reused = spare.withLock { spare -> UnsafeMutableRawBufferPointer? in
            guard let buffer = spare.bins[sizeClass].popLast() else { return nil }
            spare.bytes -= size
            spare.count -= 1
            return buffer
        }
        return reused ?? .allocate(byteCount: size, alignment: alignment)
    }

    /// Gives back a buffer from `take`: kept if it is of a cached size,
    /// the oldest idle buffers freed to make room for it, largest sizes first.
    public func give(_ buffer: UnsafeMutableRawBufferPointer) {
        guard let sizeClass = sizeClass(of: buffer.count), smallest << sizeClass == buffer.count, buffer.count <= retainedBytes
        else { return buffer.deallocate() }
        let evicted = spare.withLock { spare -> [UnsafeMutableRawBufferPointer] in
            var evicted: [UnsafeMutableRawBufferPointer] = []
            var bin = spare.bins.count - 1
            while spare.bytes + buffer.count > retainedBytes {
                // The bound holds whenever the buffers kept fit it, so some
                // bin still has a buffer here.
                while spare.bins[bin].isEmpty { bin -= 1 }
                let oldest = spare.bins[bin].removeFirst()
                spare.bytes -= oldest.count
                spare.count -= 1
                evicted.append(oldest)
            }
            spare.bins[sizeClass].append(buffer)
            spare.bytes += buffer.count
            spare.count += 1
            return evicted
        }
        for old in evicted { old.deallocate() }
    }

    /// Idle buffers and their bytes, for tests.
    public var idle: (count: Int, bytes: Int) { spare.withLock { ($0.count, $0.bytes) } }

    /// Cached buffers come in powers of two, so that requests of nearby
    /// sizes share them: the size class of `count` (`smallest << class` is
    /// the buffer's size), nil for sizes not cached.
    private func sizeClass(of count: Int) -> Int? {
        guard count >= smallest, count <= Self.largestCached else { return nil }
        let size = 1 << (Int.bitWidth - (count - 1).leadingZeroBitCount)
        return size.trailingZeroBitCount - smallest.trailingZeroBitCount
    }
}
