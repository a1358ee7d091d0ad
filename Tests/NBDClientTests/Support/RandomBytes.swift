/// Random test data: seeded once from the system, then a fast generator
/// (SplitMix64), since a system call per byte makes megabytes slow.
func randomBytes(_ count: Int) -> [UInt8] {
    var state = UInt64.random(in: .min ... .max)
    var bytes = [UInt8](repeating: 0, count: count)
    bytes.withUnsafeMutableBytes { raw in
        var index = 0
        while index < count {
            state &+= 0x9E37_79B9_7F4A_7C15
            var word = state
            word = (word ^ (word >> 30)) &* 0xBF58_476D_1CE4_E5B9
            word = (word ^ (word >> 27)) &* 0x94D0_49BB_1331_11EB
            word ^= word >> 31
            for _ in 0..<8 where index < count {
                raw[index] = UInt8(truncatingIfNeeded: word)
                word >>= 8
                index += 1
            }
        }
    }
    return bytes
}
