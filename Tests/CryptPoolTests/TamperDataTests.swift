import BlockDevice
import Foundation
import Keys
import PoolFormat
import Testing

@testable import CryptPool

/// Data blocks edited on the raw device between runs: every read of an
/// edited block fails with the exact integrity error, every other block
/// still reads back exactly what was written.
@Suite struct TamperDataTests {
    /// A pool with two volumes holding known data, committed (and with
    /// `checkpointed`, folded into the volume trees) and reopened.
    static func rig(checkpointed: Bool, useAnchor: Bool = true) throws -> TamperRig {
        let rig = try TamperRig(useAnchor: useAnchor, checkpointEveryFlush: checkpointed)
        try rig.pool.createVolume(name: "vm1", size: 16 << 20)
        try rig.pool.createVolume(name: "vm2", size: 8 << 20)
        try rig.fill("vm1", from: 0, count: 24, seed: 1)
        try rig.fill("vm1", from: 200, count: 8, seed: 2)
        try rig.fill("vm2", from: 0, count: 16, seed: 3)
        try rig.pool.flush()
        _ = try rig.reopen()
        #expect(rig.checkNoWrongData().isEmpty)
        if checkpointed {
            #expect(try rig.volumeState("vm1").overlay.isEmpty)
        } else {
            #expect(try rig.volumeState("vm1").overlay.mapped.count == 32)
        }
        return rig
    }

    @Test(arguments: [false, true], [0, 1234, 4095])
    func bitFlipInADataBlock(checkpointed: Bool, byte: Int) throws {
        let rig = try Self.rig(checkpointed: checkpointed)
        let target = try rig.pointer("vm1", 5)
        rig.flipBit(target.block, byte: byte, bit: byte % 8)

        _ = try rig.reopen()
        #expect(try rig.pointer("vm1", 5) == target)
        let failure = rig.dataFailure("vm1", 5, pointer: target)
        #expect(rig.readBlock("vm1", 5) == .failed(failure))
        // Every other block, of both volumes, still reads exactly as written.
        #expect(rig.checkNoWrongData() == ["vm1": [5: failure]])
        // The consumer's path (NBD_CMD_READ) gets EIO, and so does a read spanning the block.
        let volume = try rig.pool.volume(named: "vm1")
        for (offset, length) in [(UInt64(5 * 4096), 4096), (UInt64(4 * 4096 + 100), 8192), (0, 64 << 10)] {
            #expect(throws: BlockDeviceError.self) { try read(volume, offset, length) }
        }
        // bulkhead verify names exactly this block.
        let report = rig.pool.verify()
        #expect(report.failures == [failure])
        #expect(report.volumesChecked == 2)
    }

    @Test(arguments: [false, true])
    func twoDataBlocksSwapped(checkpointed: Bool) throws {
        let rig = try Self.rig(checkpointed: checkpointed)
        let first = try rig.pointer("vm1", 3)
        let second = try rig.pointer("vm1", 201)
        let (a, b) = (rig.rawBlock(first.block), rig.rawBlock(second.block))
        rig.setRawBlock(first.block, b)
        rig.setRawBlock(second.block, a)

        _ = try rig.reopen()
        let failed = rig.checkNoWrongData()
        #expect(failed == ["vm1": [3: rig.dataFailure("vm1", 3, pointer: first), 201: rig.dataFailure("vm1", 201, pointer: second)]])
    }

    /// Both volumes hold the same plaintext at block 7; vm2's ciphertext
    /// placed where vm1's lives still fails (other volume key and volume ID).
    @Test(arguments: [false, true])
    func dataBlockCopiedFromAnotherVolume(checkpointed: Bool) throws {
        let rig = try Self.rig(checkpointed: checkpointed)
        let same = [UInt8](repeating: 0x42, count: 4096)
        try rig.put("vm1", 7, same)
        try rig.put("vm2", 7, same)
        try rig.pool.flush()
        let target = try rig.pointer("vm1", 7)
        let source = try rig.pointer("vm2", 7)
        rig.setRawBlock(target.block, rig.rawBlock(source.block))

        _ = try rig.reopen()
        #expect(rig.checkNoWrongData() == ["vm1": [7: rig.dataFailure("vm1", 7, pointer: target)]])
        #expect(rig.readBlock("vm2", 7) == .data(same))
    }

    /// Write v1, flush, write v2, flush, then put v1's ciphertext where v2
    /// lives: the pointer holds v2's tag and counter, so v1 does not open.
    @Test(arguments: [false, true])
    func blockReplacedByItsOlderVersion(checkpointed: Bool) throws {
        let rig = try Self.rig(checkpointed: checkpointed)
        let v1 = [UInt8](repeating: 0x01, count: 4096)
        let v2 = [UInt8](repeating: 0x02, count: 4096)
        try rig.put("vm1", 9, v1)
        try rig.pool.flush()
        let old = try rig.pointer("vm1", 9)
        let oldCiphertext = rig.rawBlock(old.block)
        try rig.put("vm1", 9, v2)
        try rig.pool.flush()
        let new = try rig.pointer("vm1", 9)
        #expect(new.block != old.block)
        rig.setRawBlock(new.block, oldCiphertext)

        // The live pool (same run) catches it as well as a reopened one.
        let failure = rig.dataFailure("vm1", 9, pointer: new)
        #expect(rig.readBlock("vm1", 9) == .failed(failure))
        _ = try rig.reopen()
        #expect(rig.checkNoWrongData() == ["vm1": [9: failure]])
    }

    /// Two pools with the same passphrase, same volume name and same data:
    /// a block of one placed in the other does not open.
    @Test(arguments: [false, true])
    func dataBlockCopiedFromAnotherPool(checkpointed: Bool) throws {
        let rig = try Self.rig(checkpointed: checkpointed)
        let other = try Self.rig(checkpointed: checkpointed)
        #expect(rig.poolID != other.poolID)
        let target = try rig.pointer("vm1", 11)
        let source = try other.pointer("vm1", 11)
        #expect(rig.expected["vm1"]![11] == other.expected["vm1"]![11])
        rig.setRawBlock(target.block, other.rawBlock(source.block))

        _ = try rig.reopen()
        #expect(rig.checkNoWrongData() == ["vm1": [11: rig.dataFailure("vm1", 11, pointer: target)]])
    }

    /// A data block zeroed (trimmed) by the storage side is not read as zeroes.
    @Test func dataBlockZeroedByTheStorageSide() throws {
        let rig = try Self.rig(checkpointed: false)
        let target = try rig.pointer("vm2", 2)
        try rig.device.trim(at: target.block * 4096, length: 4096, fua: false)
        _ = try rig.reopen()
        #expect(rig.checkNoWrongData() == ["vm2": [2: rig.dataFailure("vm2", 2, pointer: target)]])
    }

    /// A partial write merges into the damaged block's plaintext, so it must
    /// fail rather than merge into garbage or zeroes; a whole-block write
    /// needs no read and replaces the damaged block.
    @Test func writesOverADamagedBlock() throws {
        let rig = try Self.rig(checkpointed: false)
        let target = try rig.pointer("vm1", 6)
        rig.flipBit(target.block, byte: 10)
        _ = try rig.reopen()
        let volume = try rig.pool.volume(named: "vm1")
        #expect(throws: BlockDeviceError.self) { try write(volume, 6 * 4096 + 100, [1, 2, 3]) }
        #expect(rig.readBlock("vm1", 6) == .failed(rig.dataFailure("vm1", 6, pointer: target)))
        let replacement = [UInt8](repeating: 0x66, count: 4096)
        try rig.put("vm1", 6, replacement)
        try rig.pool.flush()
        _ = try rig.reopen()
        #expect(rig.checkNoWrongData().isEmpty)
    }
}
