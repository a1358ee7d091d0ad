import PoolFormat
import Testing

@testable import CryptPool

/// Which sealed writes storage may send by reference (`isLendable`): those
/// whose buffer is a mapping of its own, which a storage socket may still
/// hold after the write is answered without the heap handing it out again.
@Suite struct SealedWriteTests {
    @Test func largeWritesAreLentSmallOnesCopied() {
        let small = SealedWrite(blocks: 0..<1, locations: [PhysicalBlock(7)], epoch: 0)
        #expect(!small.isLendable)
        let belowTheMapping = SealedWrite(blocks: 0..<16, locations: (100..<116).map { PhysicalBlock($0) }, epoch: 0)
        #expect(!belowTheMapping.isLendable)
        let large = SealedWrite(blocks: 0..<256, locations: (100..<356).map { PhysicalBlock($0) }, epoch: 0)
        #expect(large.isLendable)
        #expect(large.pieces.count == 1)
        #expect(large.pieces[0].buffer.count == 1 << 20)
        // A run past the inline limit (64 KiB) always lies in a lent buffer.
        let justPastTheLimit = SealedWrite(blocks: 0..<17, locations: (100..<117).map { PhysicalBlock($0) }, epoch: 0)
        #expect(justPastTheLimit.isLendable)
    }
}
