import BlockDevice
import Foundation
import Keys
import PoolFormat
import Testing

@testable import CryptPool

/// The storage side serving an older copy of the pool, and a truncated one.
@Suite struct TamperRollbackTests {
    /// Generations 1 format, 2 create, 3 first data; the snapshot; 4 and 5 more data.
    static func rolledForward() throws -> (TamperRig, snapshot: [UInt8], old: [String: [UInt64: [UInt8]]]) {
        let rig = try TamperRig(useAnchor: true)
        try rig.pool.createVolume(name: "vm1", size: 16 << 20)
        try rig.fill("vm1", from: 0, count: 8, seed: 1)
        try rig.pool.flush()
        #expect(rig.pool.generation == 3)
        let snapshot = rig.device.snapshot()
        let old = rig.expected
        try rig.fill("vm1", from: 4, count: 8, seed: 2)
        try rig.pool.flush()
        try rig.fill("vm1", from: 100, count: 2, seed: 3)
        try rig.pool.flush()
        #expect(rig.pool.generation == 5)
        return (rig, snapshot, old)
    }

    @Test func wholeImageRestoredFromAnEarlierCopy() throws {
        let (rig, snapshot, _) = try Self.rolledForward()
        rig.restore(snapshot)
        let expected = PoolError.rolledBack(pool: hex(rig.poolID), found: 3, anchor: 5)
        let error = rig.openError()
        #expect(error == expected)
        let message = try #require(error).description
        #expect(message.contains(hex(rig.poolID)))
        #expect(message.contains("generation 3"))
        #expect(message.contains("remembers 5"))
        // A crypt domain restarted on the same state directory refuses too.
        let restarted = try FileTrustAnchor(directory: rig.anchorDirectory)
        #expect(throws: expected) { try Pool.open(storage: rig.device, secret: .passphrase(passphrase), anchor: restarted) }
        // And so does unlocking by recovery key.
        #expect(throws: expected) {
            try Pool.open(storage: rig.device, secret: .recovery(rig.recoveryKey), anchor: restarted)
        }
    }

    @Test func superblockSlotsAloneRestored() throws {
        let (rig, snapshot, _) = try Self.rolledForward()
        for slot in PoolLayout.superblockSlots {
            let start = Int(slot) * 4096
            rig.setRawBlock(slot, Array(snapshot[start..<(start + 4096)]))
        }
        #expect(rig.openError() == .rolledBack(pool: hex(rig.poolID), found: 3, anchor: 5))
    }

    /// Without the anchor (state directory lost) the old copy opens as what
    /// it is: a consistent generation 3, every block as it was then.
    @Test func restoredImageWithoutAnchorOpensAsTheOldGeneration() throws {
        let (rig, snapshot, old) = try Self.rolledForward()
        rig.restore(snapshot)
        let pool = try rig.reopen(anchor: false)
        #expect(pool.generation == 3)
        let zero = [UInt8](repeating: 0, count: 4096)
        var asOfGeneration3: [UInt64: [UInt8]] = [:]
        for block in rig.expected["vm1"]!.keys { asOfGeneration3[block] = old["vm1"]?[block] ?? zero }
        #expect(rig.checkNoWrongData(expecting: ["vm1": asOfGeneration3]).isEmpty)
    }

    /// The storage side restores the old image under a running pool. The
    /// pool keeps its own pointers, so blocks rewritten since the copy fail
    /// and the others read as written; its next commit builds on log blocks
    /// the storage side has rolled back, so the following open refuses with
    /// the exact log block.
    @Test func wholeImageRolledBackUnderARunningPool() throws {
        let (rig, snapshot, _) = try Self.rolledForward()
        let running = rig.pool
        let rewritten: [UInt64] = [4, 5, 6, 7, 8, 9, 10, 11, 100, 101]
        let pointers = try Dictionary(uniqueKeysWithValues: rewritten.map { ($0, try rig.pointer("vm1", $0)) })
        let logBlocks = running.state.withLock { $0.logBlocks }
        #expect(logBlocks.count == 3)
        let logHead = running.state.withLock { $0.logHead }
        rig.restore(snapshot)

        var failures: [UInt64: PoolError] = [:]
        for block in rewritten { failures[block] = rig.dataFailure("vm1", block, pointer: pointers[block]!) }
        #expect(rig.checkNoWrongData(in: running) == ["vm1": failures])

        // The running pool commits generation 6 on top of the rolled-back log.
        try rig.fill("vm1", from: 300, count: 1, seed: 9)
        try running.flush()
        #expect(running.generation == 6)
        let error = try #require(rig.openError())
        guard case .integrity(let failure) = error else {
            Issue.record("expected an integrity failure, got \(error)")
            return
        }
        #expect(failure.structure == "log block")
        #expect(failure.index == 2)
        #expect(failure.physicalBlock == logBlocks[2])
        #expect(failure.expectedTag == hex(logHead.tag))
    }

    /// Truncated images open with a clear error, never a trap.
    @Test func truncatedImage() throws {
        let (rig, _, _) = try Self.rolledForward()
        let image = rig.device.snapshot()
        let headerAreas = 2 * 16 * 4096
        let cases: [(Int, PoolError)] = [
            (0, .notAPool("the device is only 0 bytes")),
            (4096, .notAPool("the device is only 4096 bytes")),
            (headerAreas - 1, .notAPool("the device is only \(headerAreas - 1) bytes")),
        ]
        for (size, error) in cases {
            let device = try MemoryBlockDevice(contents: Array(image.prefix(size)))
            #expect(throws: error, "\(size) bytes") {
                try Pool.open(storage: device, secret: .passphrase(passphrase), anchor: rig.anchor)
            }
        }
        let blocks = image.count / 4096
        for size in [headerAreas, headerAreas + 4 * 4096, image.count / 2, image.count - 4096, image.count - 1] {
            let device = try MemoryBlockDevice(contents: Array(image.prefix(size)))
            #expect(
                throws: PoolError.notAPool("the header says \(blocks) blocks but the device holds \(size / 4096) (truncated?)"),
                "\(size) bytes"
            ) {
                try Pool.open(storage: device, secret: .passphrase(passphrase), anchor: rig.anchor)
            }
        }
    }

    @Test func blankDeviceIsNotAPool() throws {
        let device = try MemoryBlockDevice(size: 1 << 20)
        let error = #expect(throws: PoolError.self) {
            try Pool.open(storage: device, secret: .passphrase(passphrase), anchor: nil)
        }
        guard case .notAPool(let why) = error else {
            Issue.record("expected notAPool, got \(String(describing: error))")
            return
        }
        #expect(why.contains("header area A") && why.contains("header area B") && why.contains("bad magic"))
    }
}
