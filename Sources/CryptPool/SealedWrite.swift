import BlockDevice
import PoolFormat
import Threads

/// A write sealed into newly allocated places and not yet mapped: the
/// sealed blocks in physical order in one buffer, so that each run of
/// consecutive places goes to storage in one request.
// SAFETY: filled by the thread that seals, then only read, by whichever
// thread writes it to storage and maps it; `sealed` is owned here and goes
// back to the buffer cache with the write, so `pieces`, which point into
// it, are valid as long as the write is held.
final class SealedWrite: @unchecked Sendable {
    let blocks: Range<UInt64>
    /// The place of each logical block, in logical order.
    let locations: [PhysicalBlock]
    /// Logical indexes in physical order; nil when that is logical order
    /// (one block, or places allocated ascending: almost every write), so
    /// such a write needs no sort and no index array.
    private let order: [Int]?
    /// Pointers to the sealed blocks, in logical order. Written while
    /// sealing, read once storage has answered: never at once, so the
    /// runtime's exclusivity check of each access is left out.
    @exclusivity(unchecked) var pointers: [BlockPointer]
    /// The storage session the write was sent in (docs/format.md, section 7).
    let epoch: UInt64
    let sealed: UnsafeMutableRawBufferPointer
    /// The whole buffer `sealed` starts, perhaps larger.
    private let buffer: UnsafeMutableRawBufferPointer
    /// The storage writes: each run of consecutive places, as its byte
    /// offset on storage and its sealed bytes.
    let pieces: [WritePiece]

    init(blocks: Range<UInt64>, locations: [PhysicalBlock], epoch: UInt64) {
        precondition(locations.count == blocks.count)
        self.blocks = blocks
        self.locations = locations
        self.epoch = epoch
        let ascending = zip(locations, locations.dropFirst()).allSatisfy { $0 < $1 }
        let order = ascending ? nil : locations.indices.sorted { locations[$0] < locations[$1] }
        self.order = order
        pointers = [BlockPointer](repeating: .null, count: blocks.count)
        let byteCount = blocks.count * PoolLayout.blockSize
        buffer = Self.buffers.take(byteCount)
        sealed = UnsafeMutableRawBufferPointer(rebasing: buffer[..<byteCount])
        func place(_ position: Int) -> PhysicalBlock { locations[order?[position] ?? position] }
        let blockSize = PoolLayout.blockSize
        var pieces: [WritePiece] = []
        var first = 0
        while first < locations.count {
            var end = first + 1
            while end < locations.count, place(end) == place(end - 1) + 1 { end += 1 }
            pieces.append((place(first) * UInt64(blockSize), UnsafeRawBufferPointer(rebasing: sealed[(first * blockSize)..<(end * blockSize)])))
            first = end
        }
        self.pieces = pieces
    }

    deinit { Self.buffers.give(buffer) }

    /// Whether storage may send the pieces by reference rather than by copy
    /// (`AsynchronousBlockDevice.startLentWrites`): the buffer is a mapping
    /// of its own, and like every buffer of this cache it only ever holds
    /// ciphertext sealed for storage, from its mapping to its unmapping. A
    /// storage domain that reads a payload late, after answering it, sees
    /// the ciphertext of another write at worst, which it receives anyway.
    var isLendable: Bool { Self.buffers.isMapped(buffer.count) }

    /// Sealed data only (ciphertext), never anything else: buffers go back
    /// without zeroing, and lent ones (`isLendable`) may still be read by
    /// the storage domain after the write is answered. The bound covers
    /// the writes in flight of a few connections; one-block buffers are
    /// kept too, so a 4 KiB write takes no malloc for them. From 128 KiB
    /// on, buffers are mappings of their own, so that none returns to the
    /// heap for plaintext while a socket may still hold its pages.
    private static let buffers = BufferCache(
        retainedBytes: 32 << 20, alignment: 64, smallest: PoolLayout.blockSize, mappedFrom: 128 << 10)

    /// The logical index of the block at physical position `position`.
    func logicalIndex(at position: Int) -> Int { order?[position] ?? position }
}
