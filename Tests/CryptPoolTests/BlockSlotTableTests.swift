import PoolFormat
import TestSupport
import Testing

@testable import CryptPool

/// The node cache's index agrees with a `Dictionary` through any mix of
/// inserts, updates, removals and lookups, whatever the blocks' spread.
@Suite struct BlockSlotTableTests {
    @Test(arguments: ["consecutive", "clustered", "spread"])
    func agreesWithADictionary(spread: String) {
        var generator = SeededGenerator(seed: 77)
        let capacity = 300
        var table = BlockSlotTable(capacity: capacity)
        var reference: [PhysicalBlock: Int] = [:]
        func block() -> PhysicalBlock {
            switch spread {
            case "consecutive": PhysicalBlock.random(in: 5_000..<5_600, using: &generator)
            // Blocks that share their low bits, and so their products' low bits.
            case "clustered": PhysicalBlock.random(in: 0..<600, using: &generator) << 20
            default: PhysicalBlock.random(in: 0..<(1 << 40), using: &generator)
            }
        }
        for step in 0..<60_000 {
            let key = block()
            switch Int.random(in: 0..<4, using: &generator) {
            case 0 where reference.count < capacity || reference[key] != nil:
                table[key] = step
                reference[key] = step
            case 1:
                table[key] = nil
                reference[key] = nil
            default:
                break
            }
            #expect(table[key] == reference[key], "step \(step), block \(key)")
            #expect(table.count == reference.count)
            if step % 5_000 == 0 {
                for (known, slot) in reference { #expect(table[known] == slot, "step \(step), block \(known)") }
            }
        }
        for (known, slot) in reference { #expect(table[known] == slot) }
        for known in Array(reference.keys) { table[known] = nil }
        #expect(table.count == 0)
        #expect(table[block()] == nil)
    }
}
