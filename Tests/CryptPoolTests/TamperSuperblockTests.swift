import Foundation
import Keys
import PoolFormat
import Testing

@testable import CryptPool

/// Superblock slots edited on the raw device. A slot that does not
/// authenticate is passed over; when that hides the newest commit, the
/// trust anchor makes open refuse, and without it open loads the newest
/// older commit (docs/format.md, sections 6 and 9).
@Suite struct TamperSuperblockTests {
    static let zero = [UInt8](repeating: 0, count: 4096)

    /// Offsets inside the HMAC'd bytes: magic, version, pool ID, generation,
    /// anchor epoch, checkpoint pointer (block, tag), log head, counts, and
    /// the HMAC itself.
    static let authenticatedOffsets = [0, 8, 20, 32, 40, 48, 88, 112, 150, 176, 184, 192, 223]

    @Test(arguments: [UInt64(1), 2, 3])
    func olderSlotFlippedIsPassedOver(generation: UInt64) throws {
        for useAnchor in [true, false] {
            let rig = try TamperRig.fourGenerations(useAnchor: useAnchor)
            rig.flipBit(TamperRig.slot(ofGeneration: generation), byte: 33)
            let pool = try rig.reopen(anchor: useAnchor)
            #expect(pool.generation == 4)
            #expect(rig.checkNoWrongData().isEmpty)
        }
    }

    @Test(arguments: authenticatedOffsets)
    func newestSlotFlippedWithAnchorIsRefused(offset: Int) throws {
        let rig = try TamperRig.fourGenerations(useAnchor: true)
        rig.flipBit(TamperRig.slot(ofGeneration: 4), byte: offset, bit: offset % 8)
        let error = rig.openError()
        #expect(error == .rolledBack(pool: hex(rig.poolID), found: 3, anchor: 4))
        #expect(error?.description.contains("generation 3") == true)
        #expect(error?.description.contains("remembers 4") == true)
    }

    /// Without an anchor, nothing remembers generation 4: open loads 3, and
    /// block 2 (written only in 4) reads as unwritten. This is the documented
    /// limit of running without a trust anchor, not a silent corruption:
    /// every block reads as of one consistent earlier commit.
    @Test(arguments: authenticatedOffsets)
    func newestSlotFlippedWithoutAnchorFallsBackToGeneration3(offset: Int) throws {
        let rig = try TamperRig.fourGenerations(useAnchor: false)
        rig.flipBit(TamperRig.slot(ofGeneration: 4), byte: offset, bit: offset % 8)
        let pool = try rig.reopen(anchor: false)
        #expect(pool.generation == 3)
        #expect(rig.checkNoWrongData(expecting: ["vm1": [2: Self.zero]]).isEmpty)
    }

    /// The bytes after the HMAC are not read at all; changing them changes nothing.
    @Test func paddingAfterTheHMACIsIgnored() throws {
        let rig = try TamperRig.fourGenerations(useAnchor: true)
        for offset in [224, 1000, 4095] { rig.flipBit(TamperRig.slot(ofGeneration: 4), byte: offset) }
        let pool = try rig.reopen()
        #expect(pool.generation == 4)
        #expect(rig.checkNoWrongData().isEmpty)
    }

    @Test func everySlotFlipped() throws {
        for useAnchor in [true, false] {
            let rig = try TamperRig.fourGenerations(useAnchor: useAnchor)
            for generation: UInt64 in 1...4 { rig.flipBit(TamperRig.slot(ofGeneration: generation), byte: 100) }
            #expect(rig.openError(anchor: useAnchor) == .noValidSuperblock)
        }
    }

    /// An older slot copied over the newest: it authenticates but sits in
    /// the wrong slot for its generation, so it is passed over; the
    /// anchor then refuses generation 3.
    @Test func olderSlotCopiedOverTheNewest() throws {
        let rig = try TamperRig.fourGenerations(useAnchor: true)
        rig.setRawBlock(TamperRig.slot(ofGeneration: 4), rig.rawBlock(TamperRig.slot(ofGeneration: 3)))
        #expect(rig.openError() == .rolledBack(pool: hex(rig.poolID), found: 3, anchor: 4))
    }

    /// Superblocks of another pool with the same passphrase do not authenticate here.
    @Test func slotFromAnotherPool() throws {
        let rig = try TamperRig.fourGenerations(useAnchor: true)
        let other = try TamperRig.fourGenerations(useAnchor: false)
        rig.setRawBlock(TamperRig.slot(ofGeneration: 4), other.rawBlock(TamperRig.slot(ofGeneration: 4)))
        #expect(rig.openError() == .rolledBack(pool: hex(rig.poolID), found: 3, anchor: 4))
        for generation: UInt64 in 1...4 {
            rig.setRawBlock(TamperRig.slot(ofGeneration: generation), other.rawBlock(TamperRig.slot(ofGeneration: generation)))
        }
        #expect(rig.openError() == .noValidSuperblock)
    }
}
