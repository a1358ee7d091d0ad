import Foundation

/// What each 4 KiB block of a volume may hold, given the writes a client
/// made and which of them a completed flush covers. Every write fills whole
/// blocks with one byte (its pattern), so a block's content is one pattern.
///
/// A block written and covered by a completed NBD_CMD_FLUSH must hold
/// exactly the last pattern written; a block written after the last flush
/// (or by a write that was not acknowledged) may hold its old contents or
/// any pattern written since, nothing else.
struct BlockModel {
    static let blockSize = 4096

    private struct Write {
        let pattern: UInt8
        var acknowledged: Bool
    }

    /// Patterns a block may hold as of the last completed flush.
    private var settled: [Set<UInt8>]
    /// Writes since then, oldest first.
    private var since: [[Write]]

    init(blocks: Int) {
        settled = Array(repeating: [0], count: blocks)
        since = Array(repeating: [], count: blocks)
    }

    var blockCount: Int { settled.count }

    /// Records a write of `pattern` over `blocks`, not yet acknowledged.
    mutating func attempt(_ blocks: Range<Int>, _ pattern: UInt8) {
        for block in blocks { since[block].append(Write(pattern: pattern, acknowledged: false)) }
    }

    /// Marks the write of `pattern` over `blocks` (the newest one there) as
    /// acknowledged. Writes that failed stay unacknowledged: they may or
    /// may not have happened.
    mutating func acknowledge(_ blocks: Range<Int>, _ pattern: UInt8) {
        for block in blocks {
            if let index = since[block].lastIndex(where: { $0.pattern == pattern }) { since[block][index].acknowledged = true }
        }
    }

    /// A flush completed after every write recorded so far was sent.
    mutating func flushed() {
        for block in since.indices where !since[block].isEmpty {
            let writes = since[block]
            if let last = writes.lastIndex(where: \.acknowledged) {
                settled[block] = Set(writes[last...].map(\.pattern))
            } else {
                settled[block].formUnion(writes.map(\.pattern))
            }
            since[block] = []
        }
    }

    /// Patterns `block` may hold now.
    func allowed(_ block: Int) -> Set<UInt8> { settled[block].union(since[block].map(\.pattern)) }

    /// The one pattern `block` must hold when read from a live daemon that
    /// acknowledged every write (nil when not determined).
    func latest(_ block: Int) -> UInt8? {
        if let last = since[block].last { return last.acknowledged ? last.pattern : nil }
        return settled[block].count == 1 ? settled[block].first : nil
    }

    /// Checks a volume image against the model. With `strict`, every block
    /// whose writes were all acknowledged must hold the newest pattern (a
    /// live daemon); otherwise anything allowed passes (after a crash).
    /// Returns the problems found, at most `limit`, and how many blocks held
    /// a pattern written after the last flush.
    func check(_ image: Data, strict: Bool, limit: Int = 10) -> (problems: [String], unflushedNew: Int, unflushedOld: Int) {
        var problems: [String] = []
        var (new, old) = (0, 0)
        image.withUnsafeBytes { (raw: UnsafeRawBufferPointer) in
            for block in 0..<blockCount where problems.count < limit {
                let start = block * Self.blockSize
                let bytes = UnsafeRawBufferPointer(rebasing: raw[start..<(start + Self.blockSize)])
                guard let first = uniformByte(bytes) else {
                    let distinct = Set(bytes).sorted().prefix(8).map { String($0, radix: 16) }
                    problems.append("block \(block) is torn: bytes \(distinct) in one block; allowed \(describe(allowed(block)))")
                    continue
                }
                if strict, let expected = latest(block), first != expected {
                    problems.append("block \(block) holds 0x\(String(first, radix: 16)), the newest acknowledged write is 0x\(String(expected, radix: 16))")
                } else if !allowed(block).contains(first) {
                    problems.append("block \(block) holds 0x\(String(first, radix: 16)), allowed only \(describe(allowed(block)))")
                } else if !since[block].isEmpty {
                    if settled[block].contains(first) { old += 1 } else { new += 1 }
                }
            }
        }
        return (problems, new, old)
    }

    /// After a check passed: the image read is now what each block holds.
    mutating func settle(to image: Data) {
        image.withUnsafeBytes { (raw: UnsafeRawBufferPointer) in
            for block in 0..<blockCount {
                settled[block] = [raw[block * Self.blockSize]]
                since[block] = []
            }
        }
    }

    private func describe(_ patterns: Set<UInt8>) -> String {
        "{" + patterns.sorted().map { "0x" + String($0, radix: 16) }.joined(separator: ", ") + "}"
    }
}
