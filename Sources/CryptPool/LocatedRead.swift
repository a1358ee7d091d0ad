import BlockDevice
import PoolFormat
import Threads

/// The blocks of a read that storage holds, where each goes in the
/// caller's buffer, and the storage requests that fetch them
/// (`planRequests`).
// SAFETY: `plain` is the caller's buffer and `staging` this read's own;
// both stay valid and are touched by one thread at a time until the read
// completes (the staging buffer lives as long as any copy of this value).
struct LocatedRead: @unchecked Sendable {
    let first: UInt64
    let plain: UnsafeMutableRawBufferPointer
    var blocks: [(logical: UInt64, pointer: BlockPointer)] = []
    /// One storage request each: `buffer.count` bytes from byte `offset`
    /// of the pool (a whole block's).
    private(set) var requests: [ReadPiece] = []
    /// For each of `blocks`, the byte offset of its ciphertext in `staging`,
    /// or -1 when it is read into its own place in `plain`; empty when
    /// every block is.
    private var stagedAt: [Int] = []
    private var staging: StagingBuffer?

    init(first: UInt64, plain: UnsafeMutableRawBufferPointer) {
        self.first = first
        self.plain = plain
    }

    /// Free or foreign blocks one request may pass over: 8 blocks (32 KiB).
    /// Copying them costs less than the storage request it saves (some
    /// 5 µs in the storage domain and as much again here), and overwrites
    /// placed beside their neighbours (`SpaceMap.takeNearest`) leave gaps
    /// of a few blocks.
    static let spanGap: UInt64 = 8

    /// A request that passes over gaps reads at most this many times the
    /// blocks it needs, which bounds the staging memory by the request.
    static let spanAmplification: UInt64 = 2

    func slot(_ logical: UInt64) -> Int { Int(logical - first) * Int(Volume.blockSize) }

    /// Where block `index` of `blocks` goes in `plain`.
    func region(ofBlock index: Int) -> UnsafeMutableRawBufferPointer {
        let start = slot(blocks[index].logical)
        return UnsafeMutableRawBufferPointer(rebasing: plain[start..<(start + Int(Volume.blockSize))])
    }

    /// Where storage puts block `index`'s ciphertext: its own place, or
    /// the staging buffer.
    func ciphertext(ofBlock index: Int) -> UnsafeRawBufferPointer {
        guard !stagedAt.isEmpty, stagedAt[index] >= 0, let staging else { return UnsafeRawBufferPointer(region(ofBlock: index)) }
        let start = stagedAt[index]
        return UnsafeRawBufferPointer(rebasing: staging.bytes[start..<(start + Int(Volume.blockSize))])
    }

    /// Plans the storage requests for `blocks` (in logical order). Blocks
    /// consecutive both logically and physically are read straight into
    /// their place, one request a run. When that takes many requests (a
    /// volume overwritten at random), blocks are taken in physical order
    /// instead, and those within `spanGap` of each other are read with
    /// one request into a staging buffer, from which they are opened into
    /// place: a neighbourhood of permuted blocks costs one request, not
    /// one per block.
    mutating func planRequests() {
        requests = directRequests()
        guard requests.count > 1 else { return }
        let order = blocks.indices.sorted { blocks[$0].pointer.block < blocks[$1].pointer.block }
        let spans = spans(in: order)
        guard spans.count < requests.count else { return }
        requests.removeAll(keepingCapacity: true)
        let blockSize = Int(Volume.blockSize)
        let direct = spans.map { isDirect($0, order) }
        let stagedBlocks = zip(spans, direct).reduce(0) { $0 + ($1.1 ? 0 : Int($1.0.blocks)) }
        let buffer = StagingBuffer(byteCount: stagedBlocks * blockSize)
        stagedAt = [Int](repeating: -1, count: blocks.count)
        var offset = 0
        for (span, isDirect) in zip(spans, direct) {
            let members = order[span.members]
            let start = blocks[members.first!].pointer.block
            if isDirect {
                requests.append(directRequest(members.first!..<(members.first! + members.count)))
                continue
            }
            for index in members { stagedAt[index] = offset + Int(blocks[index].pointer.block - start) * blockSize }
            let bytes = Int(span.blocks) * blockSize
            requests.append((start * Volume.blockSize, UnsafeMutableRawBufferPointer(rebasing: buffer.bytes[offset..<(offset + bytes)])))
            offset += bytes
        }
        staging = buffer
    }

    /// One request for each run of `blocks` consecutive both logically and
    /// physically, straight into place.
    private func directRequests() -> [ReadPiece] {
        var requests: [ReadPiece] = []
        var start = 0
        while start < blocks.count {
            var end = start + 1
            while end < blocks.count, blocks[end].logical == blocks[end - 1].logical + 1,
                blocks[end].pointer.block == blocks[end - 1].pointer.block + 1
            {
                end += 1
            }
            requests.append(directRequest(start..<end))
            start = end
        }
        return requests
    }

    private func directRequest(_ run: Range<Int>) -> ReadPiece {
        let start = slot(blocks[run.lowerBound].logical)
        let bytes = run.count * Int(Volume.blockSize)
        return (blocks[run.lowerBound].pointer.block * Volume.blockSize, UnsafeMutableRawBufferPointer(rebasing: plain[start..<(start + bytes)]))
    }

    /// Positions in `order` (indices of `blocks` by physical block) one
    /// request reads, and how many blocks that request spans.
    private typealias Span = (members: Range<Int>, blocks: UInt64)

    /// Groups `order` into spans: the next block joins when it lies within
    /// `spanGap` of the last and the span stays within `spanAmplification`
    /// times its members.
    private func spans(in order: [Int]) -> [Span] {
        var spans: [Span] = []
        var start = 0
        while start < order.count {
            let base = blocks[order[start]].pointer.block
            var end = start + 1
            while end < order.count {
                let block = blocks[order[end]].pointer.block
                let previous = blocks[order[end - 1]].pointer.block
                let length = block - base + 1
                guard block - previous - 1 <= Self.spanGap, length <= Self.spanAmplification * UInt64(end - start + 1) else { break }
                end += 1
            }
            spans.append((start..<end, blocks[order[end - 1]].pointer.block - base + 1))
            start = end
        }
        return spans
    }

    /// Whether a span is one run read straight into place: no gaps, and
    /// its blocks in logical order, consecutive.
    private func isDirect(_ span: Span, _ order: [Int]) -> Bool {
        guard span.blocks == UInt64(span.members.count) else { return false }
        for position in span.members.dropFirst() where order[position] != order[position - 1] + 1
            || blocks[order[position]].logical != blocks[order[position - 1]].logical + 1
        {
            return false
        }
        return true
    }
}

/// Memory a scattered read's ciphertext is read into before it is opened
/// into place.
private final class StagingBuffer {
    private let buffer: UnsafeMutableRawBufferPointer
    let bytes: UnsafeMutableRawBufferPointer

    init(byteCount: Int) {
        buffer = Self.buffers.take(byteCount)
        bytes = UnsafeMutableRawBufferPointer(rebasing: buffer[..<byteCount])
    }

    deinit { Self.buffers.give(buffer) }

    /// Ciphertext only: buffers go back without zeroing. Kept, since a new
    /// mapping for every large read is populated and locked (mlockall):
    /// clearing its pages took a sixth of cryptd's time. The bound covers
    /// the large reads in flight of a few connections.
    private static let buffers = BufferCache(retainedBytes: 32 << 20, alignment: 64, smallest: PoolLayout.blockSize)
}
