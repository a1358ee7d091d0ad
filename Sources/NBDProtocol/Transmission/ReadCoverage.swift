/// The bytes of a structured NBD_CMD_READ reply delivered so far, relative to
/// the request. Content chunks must not overlap (proto.md, "Structured reply
/// types"), and a hostile server may send one chunk per byte in any order,
/// so the check must not depend on how many chunks came before: one bit per
/// byte of the request, allocated only once the reply is split.
struct ReadCoverage: Sendable {
    private var words: [UInt64] = []
    /// Bytes delivered, without double counting.
    private(set) var count: UInt64 = 0

    /// Marks `range` delivered; returns false, changing nothing, if any byte
    /// of it already was.
    /// - Precondition: `range` is non-empty and lies within `0..<requestLength`.
    mutating func insert(_ range: Range<UInt64>, requestLength: UInt64) -> Bool {
        precondition(!range.isEmpty && range.upperBound <= requestLength)
        if count == requestLength { return false }
        if count == 0, range.count == requestLength {
            // The usual reply: one chunk with all of it; no bitmap needed.
            count = requestLength
            return true
        }
        if words.isEmpty { words = Array(repeating: 0, count: Int((requestLength + 63) / 64)) }
        guard !anySet(range) else { return false }
        forEachWord(of: range) { index, mask in words[index] |= mask }
        count += UInt64(range.count)
        return true
    }

    private func anySet(_ range: Range<UInt64>) -> Bool {
        var found = false
        forEachWord(of: range) { index, mask in found = found || words[index] & mask != 0 }
        return found
    }

    /// Calls `body` with each bitmap word `range` touches and the bits of it inside `range`.
    private func forEachWord(of range: Range<UInt64>, _ body: (Int, UInt64) -> Void) {
        var position = range.lowerBound
        while position < range.upperBound {
            let bit = position % 64
            let span = min(64 - bit, range.upperBound - position)
            let mask: UInt64 = span == 64 ? .max : ((1 << span) - 1) << bit
            body(Int(position / 64), mask)
            position += span
        }
    }
}
