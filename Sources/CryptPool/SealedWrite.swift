import PoolFormat

/// A write sealed into newly allocated places and not yet mapped: the
/// sealed blocks in physical order in one buffer, so that each run of
/// consecutive places goes to storage in one request.
// SAFETY: filled by the thread that seals, then only read, by whichever
// thread writes it to storage and maps it; `sealed` is owned here and goes
// back to the buffer cache with the write.
final class SealedWrite: @unchecked Sendable {
    let blocks: Range<UInt64>
    /// The place of each logical block, in logical order.
    let locations: [PhysicalBlock]
    /// Logical indexes in physical order.
    let order: [Int]
    /// Pointers to the sealed blocks, in logical order.
    var pointers: [BlockPointer]
    /// The storage session the write was sent in (docs/format.md, section 7).
    let epoch: UInt64
    let sealed: UnsafeMutableRawBufferPointer
    /// The whole buffer `sealed` starts, perhaps larger.
    private let buffer: UnsafeMutableRawBufferPointer
    /// Ranges of `order` whose places are consecutive.
    let runs: [Range<Int>]

    init(blocks: Range<UInt64>, locations: [PhysicalBlock], order: [Int], epoch: UInt64) {
        self.blocks = blocks
        self.locations = locations
        self.order = order
        self.epoch = epoch
        pointers = [BlockPointer](repeating: .null, count: blocks.count)
        let byteCount = blocks.count * PoolLayout.blockSize
        buffer = Self.buffers.take(byteCount)
        sealed = UnsafeMutableRawBufferPointer(rebasing: buffer[..<byteCount])
        var runs: [Range<Int>] = []
        var first = 0
        while first < order.count {
            var end = first + 1
            while end < order.count, locations[order[end]] == locations[order[end - 1]] + 1 { end += 1 }
            runs.append(first..<end)
            first = end
        }
        self.runs = runs
    }

    deinit { Self.buffers.give(buffer) }

    /// Sealed data only (ciphertext): buffers go back without zeroing. The
    /// bound covers the writes in flight of a few connections.
    private static let buffers = BufferCache(retainedBytes: 32 << 20, alignment: 64)

    func physicalStart(of run: Range<Int>) -> PhysicalBlock { locations[order[run.lowerBound]] }

    func bytes(of run: Range<Int>) -> UnsafeRawBufferPointer {
        UnsafeRawBufferPointer(rebasing: sealed[(run.lowerBound * PoolLayout.blockSize)..<(run.upperBound * PoolLayout.blockSize)])
    }
}
