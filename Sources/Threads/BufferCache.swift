#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif

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
    /// Buffers of at least this many bytes are mappings of their own
    /// (mmap(2)), unmapped when freed; nil: all come from malloc.
    public let mappedFrom: Int?

    /// `mappedFrom` makes every buffer of that size or larger a private
    /// mapping of its own, never heap memory: once unmapped, its pages go
    /// back to the kernel rather than to the next malloc, so pages a socket
    /// still references after the buffer is freed (`SplicePipe.send`) are
    /// never handed out again for other data. It must be a multiple of the
    /// page size, as large as `alignment`.
    public init(retainedBytes: Int, alignment: Int, smallest: Int = BufferCache.smallestCached, mappedFrom: Int? = nil) {
        precondition(smallest > 0 && smallest & (smallest - 1) == 0 && smallest <= Self.largestCached)
        let pageSize = Int(sysconf(Int32(_SC_PAGESIZE)))
        precondition(mappedFrom.map { $0 > 0 && $0 % pageSize == 0 && alignment <= pageSize } ?? true)
        self.retainedBytes = retainedBytes
        self.alignment = alignment
        self.smallest = smallest
        self.mappedFrom = mappedFrom
        let classes = Self.largestCached.trailingZeroBitCount - smallest.trailingZeroBitCount + 1
        spare = Guarded(Spare(bins: Array(repeating: [], count: classes)))
    }

    deinit {
        spare.withLock { spare in for bin in spare.bins { for buffer in bin { release(buffer) } } }
    }

    /// Whether a buffer of `count` bytes from this cache is a mapping of its own.
    public func isMapped(_ count: Int) -> Bool { mappedFrom.map { count >= $0 } ?? false }

    private func allocate(_ count: Int) -> UnsafeMutableRawBufferPointer {
        guard isMapped(count) else { return .allocate(byteCount: count, alignment: alignment) }
        let address = mmap(nil, count, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0)
        // Out of address space, as malloc failing is: nothing to go on with.
        guard let address, address != MAP_FAILED else { fatalError("mmap of \(count) bytes failed: errno \(errno)") }
        return UnsafeMutableRawBufferPointer(start: address, count: count)
    }

    private func release(_ buffer: UnsafeMutableRawBufferPointer) {
        guard isMapped(buffer.count) else { return buffer.deallocate() }
        munmap(buffer.baseAddress, buffer.count)
    }

    /// A buffer of at least `count` bytes (exactly `count` if not cached),
    /// not initialised.
    public func take(_ count: Int) -> UnsafeMutableRawBufferPointer {
        guard let sizeClass = sizeClass(of: count) else { return allocate(count) }
        let size = smallest << sizeClass
        let reused = spare.withLock { spare -> UnsafeMutableRawBufferPointer? in
            guard let buffer = spare.bins[sizeClass].popLast() else { return nil }
            spare.bytes -= size
            spare.count -= 1
            return buffer
        }
        return reused ?? allocate(size)
    }

    /// Gives back a buffer from `take`: kept if it is of a cached size,
    /// the oldest idle buffers freed to make room for it, largest sizes first.
    public func give(_ buffer: UnsafeMutableRawBufferPointer) {
        guard let sizeClass = sizeClass(of: buffer.count), smallest << sizeClass == buffer.count, buffer.count <= retainedBytes
        else { return release(buffer) }
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
        for old in evicted { release(old) }
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
