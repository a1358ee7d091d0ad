import NBDProtocol
import Threads

/// WRITE payload memory kept for reuse (`PayloadMemory` over a
/// `BufferCache`): payloads from one 4 KiB block up come from and go back
/// to the cache, smaller ones from malloc's heap. glibc serves 4 KiB from
/// its large bins, after consolidating its fast bins (2% of cryptd under
/// 4 KiB writes); a large payload would be a fresh mapping, populated and
/// zeroed under cryptd's mlockall.
public final class PayloadCache: PayloadMemory {
    /// Idle payload bytes a cache keeps by default: four 1 MiB WRITEs in
    /// flight (fio's QD4, nbdcopy) reuse their buffers, and a cryptd,
    /// whose memory is all locked, holds at most this much unused.
    public static let defaultRetainedBytes = 16 << 20
    /// The largest payload alignment a server asks for (a 4 KiB logical
    /// block for O_DIRECT; `Transmission.payloadAlignment(for:)`).
    static let alignment = 4096
    /// The smallest payload kept: one 4 KiB block.
    static let smallest = 4096

    /// The cache every server of the process shares by default.
    public static let shared = PayloadCache(retainedBytes: defaultRetainedBytes)

    private let buffers: BufferCache

    public init(retainedBytes: Int) {
        buffers = BufferCache(retainedBytes: retainedBytes, alignment: Self.alignment, smallest: Self.smallest)
    }

    public func take(count: Int, alignment: Int) -> UnsafeMutableRawBufferPointer {
        // Below a block, from the heap at the alignment asked (not the
        // cache's 4 KiB, which glibc's memalign serves slowly).
        guard count >= buffers.smallest else { return .allocate(byteCount: count, alignment: alignment) }
        precondition(alignment <= Self.alignment, "payload alignment above \(Self.alignment)")
        return buffers.take(count)
    }

    public func give(_ buffer: UnsafeMutableRawBufferPointer) {
        if buffer.count >= buffers.smallest { buffers.give(buffer) } else { buffer.deallocate() }
    }

    /// Idle buffers and their bytes, for tests.
    public var idle: (count: Int, bytes: Int) { buffers.idle }
}
