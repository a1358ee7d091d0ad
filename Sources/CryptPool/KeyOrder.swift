/// Orders a dictionary keyed by block index, for a checkpoint's tree
/// rebuild: an LSD radix sort on the key, 11 bits a pass and only as many
/// passes as the largest key needs (two for a 1 GiB volume, three up to
/// 32 TiB). A checkpoint orders up to its record bound (65,536 entries)
/// every time; a comparison sort of the entries took about a third of the
/// checkpoint's CPU under sequential writes (`bench/CHAIN.md`, session 11).
enum KeyOrder {
    /// Bits sorted per pass: 2,048 counters, which stay in the L1 cache.
    static let digitBits = 11

    /// The entries of `dictionary` in ascending key order.
    static func sorted<Value>(_ dictionary: [UInt64: Value]) -> [(UInt64, Value)] {
        var entries = dictionary.map { ($0.key, $0.value) }
        guard entries.count > 1 else { return entries }
        let largest = entries.reduce(0) { max($0, $1.0) }
        let bits = UInt64.bitWidth - largest.leadingZeroBitCount
        var scratch = entries
        let digits = 1 << digitBits
        let mask = UInt64(digits - 1)
        var counts = [Int](repeating: 0, count: digits + 1)
        var shift = 0
        while shift < bits {
            for index in counts.indices { counts[index] = 0 }
            for entry in entries { counts[Int((entry.0 >> UInt64(shift)) & mask) + 1] += 1 }
            for digit in 1...digits { counts[digit] += counts[digit - 1] }
            // Stable: equal digits keep the order of the pass before, which
            // is what makes the lower digits' order survive.
            scratch.withUnsafeMutableBufferPointer { target in
                for entry in entries {
                    let digit = Int((entry.0 >> UInt64(shift)) & mask)
                    target[counts[digit]] = entry
                    counts[digit] += 1
                }
            }
            swap(&entries, &scratch)
            shift += digitBits
        }
        return entries
    }
}
