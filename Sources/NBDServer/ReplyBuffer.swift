#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif

/// A worker thread's buffer for READ replies, reused from request to
/// request: the reply header sits just before an aligned boundary and the
/// data is read from the device straight after it, so the whole reply goes
/// out in one send and O_DIRECT devices need no bounce buffer.
// SAFETY: one request owns a buffer at a time (taken from and given back to
// the connection's pool under its lock), passing it from the thread that
// starts a READ to the one that completes it.
final class ReplyBuffer: @unchecked Sendable {
    /// Buffers up to this size (a 1 MiB read and then some) are kept for the
    /// next request; larger ones, up to the 32 MiB payload limit, are freed
    /// after use, bounding the memory an idle connection holds.
    static let retainedCapacity = 2 << 20

    let alignment: Int
    private var memory: UnsafeMutableRawPointer?
    private var capacity = 0
    /// The whole reply of the last `prepare`: header and data.
    private(set) var reply = UnsafeMutableRawBufferPointer(start: nil, count: 0)

    /// `alignment` is at least the largest reply header and a power of two.
    init(alignment: Int) {
        self.alignment = max(64, alignment)
    }

    deinit { free(memory) }

    /// Space for a header of `headerLength` bytes followed by `dataLength`
    /// bytes starting at an aligned address. Returns (whole reply, data), or
    /// nil if memory ran out.
    func prepare(headerLength: Int, dataLength: Int)
        -> (reply: UnsafeMutableRawBufferPointer, data: UnsafeMutableRawBufferPointer)?
    {
        let needed = alignment + dataLength
        if needed > capacity {
            free(memory)
            memory = nil
            capacity = 0
            var pointer: UnsafeMutableRawPointer?
            guard posix_memalign(&pointer, alignment, needed) == 0, let pointer else { return nil }
            memory = pointer
            capacity = needed
        }
        // SAFETY: `memory` holds `capacity >= alignment + dataLength` bytes and
        // headerLength <= 64 <= alignment.
        let start = memory! + (alignment - headerLength)
        reply = UnsafeMutableRawBufferPointer(start: start, count: headerLength + dataLength)
        return (
            reply,
            UnsafeMutableRawBufferPointer(start: memory! + alignment, count: dataLength)
        )
    }

    /// Gives back an oversized buffer once its reply is sent.
    func trim() {
        if capacity > Self.retainedCapacity {
            free(memory)
            memory = nil
            capacity = 0
        }
    }
}
