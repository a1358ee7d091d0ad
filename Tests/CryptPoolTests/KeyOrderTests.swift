@testable import CryptPool
import Testing

@Suite("KeyOrder: the radix sort of a checkpoint's changes")
struct KeyOrderTests {
    func check(_ keys: [UInt64]) {
        var dictionary: [UInt64: Int] = [:]
        for (index, key) in keys.enumerated() { dictionary[key] = index }
        let sorted = KeyOrder.sorted(dictionary)
        #expect(sorted.map(\.0) == dictionary.keys.sorted())
        #expect(sorted.allSatisfy { dictionary[$0.0] == $0.1 })
    }

    @Test func emptyAndSingleEntries() {
        check([])
        check([42])
        check([0])
    }

    @Test func randomKeysOfEveryWidth() {
        var generator = SystemRandomNumberGenerator()
        for bits in [1, 10, 11, 12, 18, 22, 33, 44, 63, 64] {
            let limit: UInt64 = bits == 64 ? .max : (1 << UInt64(bits)) - 1
            let keys = (0..<5_000).map { _ in UInt64.random(in: 0...limit, using: &generator) }
            check(keys)
        }
    }

    @Test func keysThatDifferOnlyInHighDigits() {
        check((0..<3_000).map { UInt64($0) << 40 | 7 })
        check([UInt64.max, 0, UInt64.max - 1, 1 << 63, 2_048, 2_047])
    }
}
