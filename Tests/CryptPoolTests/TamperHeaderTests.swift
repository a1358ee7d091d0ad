import Foundation
import Keys
import PoolFormat
import Testing

@testable import CryptPool

/// The plaintext header areas (A at blocks 0..<16, B at 16..<32: a header
/// block and 15 keyslots each) edited on the raw device. Unlock tries the
/// area with the higher update counter first, then the other; a damaged
/// area is passed over and the intact one opens the pool.
@Suite struct TamperHeaderTests {
    static let areaA: PhysicalBlock = 0
    static let areaB: PhysicalBlock = 16

    /// Header block offsets: magic, pool ID, update counter, keyslot 0 digest, HMAC.
    static let headerOffsets = [0, 20, 40, 48, 530]
    /// Keyslot offsets: magic, type, KDF salt, padding, nonce, extra length, beyond the fields.
    static let keyslotOffsets = [0, 10, 20, 50, 70, 124, 3000]

    static func rig() throws -> TamperRig {
        let rig = try TamperRig(useAnchor: true)
        try rig.pool.createVolume(name: "vm1", size: 8 << 20)
        try rig.fill("vm1", from: 0, count: 4, seed: 1)
        try rig.pool.flush()
        return rig
    }

    struct HeaderState: Equatable, CustomStringConvertible {
        var counter: UInt64
        var slots: [UInt32]
        var description: String { "update counter \(counter), keyslots \(slots)" }
    }

    /// Which header area the open pool took: its update counter and keyslots.
    func headerState(_ pool: Pool) -> HeaderState {
        pool.header.withLock { HeaderState(counter: $0.updateCounter, slots: $0.slots.map(\.slot).sorted()) }
    }

    // MARK: Both areas alike (the normal state)

    @Test(arguments: headerOffsets)
    func headerAreaAFlipped(offset: Int) throws {
        let rig = try Self.rig()
        rig.flipBit(Self.areaA, byte: offset, bit: 3)
        let pool = try rig.reopen()
        #expect(pool.poolID == rig.poolID)
        #expect(headerState(pool).counter == 1)
        #expect(rig.checkNoWrongData().isEmpty)
    }

    @Test(arguments: headerOffsets)
    func headerFlippedInBothAreas(offset: Int) throws {
        let rig = try Self.rig()
        rig.flipBit(Self.areaA, byte: offset, bit: 3)
        rig.flipBit(Self.areaB, byte: offset, bit: 3)
        let error = rig.openError()
        switch offset {
        case 0:
            let magic = rig.rawBlock(Self.areaA).prefix(8).reversed().reduce(UInt64(0)) { $0 << 8 | UInt64($1) }
            let reason = "pool header: bad magic 0x\(String(magic, radix: 16))"
            #expect(error == .notAPool("header area A: \(reason); header area B: \(reason)"))
        case 20:
            let reason = "keyslot 0: wrong passphrase or key, or the keyslot is corrupt"
            #expect(error == .unlockFailed([reason, reason]))
        case 48:
            let reason = "keyslot 0: does not match the header's digest"
            #expect(error == .unlockFailed([reason, reason]))
        default:
            let reason = "header HMAC does not verify with the key of keyslot 0"
            #expect(error == .unlockFailed([reason, reason]))
        }
    }

    @Test(arguments: keyslotOffsets)
    func keyslotInAreaAFlipped(offset: Int) throws {
        let rig = try Self.rig()
        let intact = try #require(try KeyslotBlock.decode(rig.rawBlock(Self.areaB + 1)))
        rig.flipBit(Self.areaA + 1, byte: offset, bit: offset % 8)
        let pool = try rig.reopen()
        #expect(pool.header.withLock { $0.slots.first { $0.slot == 0 } } == intact)
        #expect(rig.checkNoWrongData().isEmpty)
    }

    /// The recovery keyslot (slot 1) damaged in area A: the recovery key
    /// falls back to area B's.
    @Test(arguments: keyslotOffsets)
    func recoveryKeyslotInAreaAFlipped(offset: Int) throws {
        let rig = try Self.rig()
        let intact = try #require(try KeyslotBlock.decode(rig.rawBlock(Self.areaB + 2)))
        rig.flipBit(Self.areaA + 2, byte: offset, bit: offset % 8)
        let pool = try rig.reopen(secret: .recovery(rig.recoveryKey))
        #expect(pool.header.withLock { $0.slots.first { $0.slot == 1 } } == intact)
        #expect(rig.checkNoWrongData().isEmpty)
    }

    /// The passphrase keyslot damaged in both areas: the passphrase no
    /// longer unlocks (each damaged slot named), the recovery key still does.
    @Test(arguments: keyslotOffsets)
    func keyslotFlippedInBothAreas(offset: Int) throws {
        let rig = try Self.rig()
        rig.flipBit(Self.areaA + 1, byte: offset, bit: offset % 8)
        rig.flipBit(Self.areaB + 1, byte: offset, bit: offset % 8)
        let reason: String
        switch offset {
        case 0:
            let magic = rig.rawBlock(Self.areaA + 1).prefix(8).reversed().reduce(UInt64(0)) { $0 << 8 | UInt64($1) }
            reason = "keyslot 0: keyslot: bad magic 0x\(String(magic, radix: 16))"
        case 10: reason = "keyslot 0: keyslot: type 5 out of range"
        case 49..<52, 60..<64, 126...:
            // Unused bytes must be zero: caught while decoding, before the digest.
            reason = "keyslot 0: keyslot: reserved byte at \(offset) is not zero"
        default: reason = "keyslot 0: does not match the header's digest"
        }
        #expect(rig.openError() == .unlockFailed([reason, reason]))
        let pool = try rig.reopen(secret: .recovery(rig.recoveryKey))
        #expect(pool.generation == 3)
        #expect(rig.checkNoWrongData().isEmpty)
    }

    /// The header block's bytes after the HMAC are not read; changing them changes nothing.
    @Test func headerPaddingIsIgnored() throws {
        let rig = try Self.rig()
        for area in [Self.areaA, Self.areaB] {
            rig.flipBit(area, byte: 600)
            rig.flipBit(area, byte: 4095)
        }
        _ = try rig.reopen()
        #expect(rig.checkNoWrongData().isEmpty)
    }

    // MARK: Areas told apart

    /// The state a crash leaves between writing area B and area A during
    /// `keyslot add`: B is newer (update counter 2, keyslots 0, 1 and a
    /// second passphrase in 2), A older (counter 1, keyslots 0 and 1).
    static let secondPassphrase = Array("a second, different passphrase".utf8)

    static func splitRig() throws -> TamperRig {
        let rig = try rig()
        let oldA = (0..<16).map { rig.rawBlock(areaA + UInt64($0)) }
        #expect(try rig.pool.addKeyslot(.passphrase(secondPassphrase), cost: testCost) == 2)
        for (index, block) in oldA.enumerated() { rig.setRawBlock(areaA + UInt64(index), block) }
        return rig
    }

    @Test func splitStateOpensFromTheNewerArea() throws {
        let rig = try Self.splitRig()
        #expect(headerState(try rig.reopen()) == HeaderState(counter: 2, slots: [0, 1, 2]))
        #expect(headerState(try rig.reopen(secret: .passphrase(Self.secondPassphrase))) == HeaderState(counter: 2, slots: [0, 1, 2]))
    }

    /// Damage in the newer area B: unlock falls back to A, which has no
    /// keyslot for the second passphrase.
    @Test(arguments: headerOffsets)
    func newerHeaderDamagedFallsBackToTheOlderArea(offset: Int) throws {
        let rig = try Self.splitRig()
        rig.flipBit(Self.areaB, byte: offset, bit: 3)
        let pool = try rig.reopen()
        #expect(headerState(pool) == HeaderState(counter: 1, slots: [0, 1]))
        #expect(rig.checkNoWrongData().isEmpty)
        #expect(rig.openError(secret: .passphrase(Self.secondPassphrase)) != nil)
    }

    /// Damage in B's keyslot 0 affects only that keyslot: the first
    /// passphrase falls back to A's keyslot 0, the second still opens B.
    @Test(arguments: keyslotOffsets)
    func newerKeyslotDamaged(offset: Int) throws {
        let rig = try Self.splitRig()
        rig.flipBit(Self.areaB + 1, byte: offset, bit: offset % 8)
        #expect(headerState(try rig.reopen()) == HeaderState(counter: 1, slots: [0, 1]))
        #expect(rig.checkNoWrongData().isEmpty)
        // B's keyslot 0 no longer decodes or matches its digest; B still opens with keyslot 2.
        let second = try rig.reopen(secret: .passphrase(Self.secondPassphrase))
        #expect(headerState(second).counter == 2)
        #expect(rig.checkNoWrongData().isEmpty)
    }

    @Test(arguments: headerOffsets)
    func olderHeaderDamagedChangesNothing(offset: Int) throws {
        let rig = try Self.splitRig()
        rig.flipBit(Self.areaA, byte: offset, bit: 3)
        #expect(headerState(try rig.reopen()) == HeaderState(counter: 2, slots: [0, 1, 2]))
        #expect(rig.checkNoWrongData().isEmpty)
    }

    // MARK: Headers of another pool

    /// Both header areas of another pool with the same passphrase: they
    /// unlock that pool's master key, under which no superblock here
    /// authenticates.
    @Test func headerAreasFromAnotherPool() throws {
        let rig = try Self.rig()
        let other = try Self.rig()
        for block in PhysicalBlock(0)..<32 { rig.setRawBlock(block, other.rawBlock(block)) }
        #expect(rig.openError() == .noValidSuperblock)
    }

    /// Only area A replaced by another pool's: it is self-consistent, so
    /// unlock takes it (equal update counters, A first) and open fails on
    /// the superblocks instead of falling back to the intact area B. The
    /// storage side can always deny service; no wrong data is returned.
    @Test func headerAreaAFromAnotherPool() throws {
        let rig = try Self.rig()
        let other = try Self.rig()
        for block in PhysicalBlock(0)..<16 { rig.setRawBlock(block, other.rawBlock(block)) }
        #expect(rig.openError() == .noValidSuperblock)
    }
}
