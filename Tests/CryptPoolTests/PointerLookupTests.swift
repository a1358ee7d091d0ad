import BlockDevice
import PoolFormat
import Testing
import Threads

@testable import CryptPool

/// Where a read's blocks are found (`Volume.pointers`): log overlay entries,
/// ranges unmapped since the checkpoint and checkpointed tree blocks mixed
/// in one request come back in order, for one block as for many; the fast
/// path, which may not read tree nodes, declines exactly the requests that
/// need a node not in the cache.
@Suite struct PointerLookupTests {
    static let blockSize = UInt64(PoolLayout.blockSize)

    /// Starts a read on the fast path and waits (boundedly) for it: nil if
    /// it declined, else whether it succeeded and the bytes.
    func startRead(_ volume: Volume, block: UInt64, count: Int) -> (done: Bool, bytes: [UInt8])? {
        let result = Guarded<AsynchronousOutcome?>(nil)
        var bytes = [UInt8](repeating: 0xEE, count: count * Int(Self.blockSize))
        let started = bytes.withUnsafeMutableBytes { buffer in
            volume.startRead(at: block * Self.blockSize, into: buffer) { outcome in result.update { $0 = outcome } }
        }
        guard started else { return nil }
        guard let outcome = result.wait(until: { $0 != nil }, timeout: 10, then: { $0 }) ?? nil else {
            Issue.record("a started read did not complete")
            return (false, bytes)
        }
        guard case .done = outcome else { return (false, bytes) }
        return (true, bytes)
    }

    @Test func overlayUnmappedAndTreeBlocksComeBackInOrder() throws {
        let rig = try TamperRig(size: 16 << 20, checkpointEveryFlush: true)
        try rig.pool.createVolume(name: "vm1", size: 4 << 20)
        try rig.fill("vm1", from: 0, count: 48, seed: 1)
        try rig.pool.flush()
        // A new run: the blocks are in the tree, none of its nodes cached.
        let volume = try rig.reopen().volume(named: "vm1")
        // Since the checkpoint: two overwrites, a trimmed run and a block past the tree's data.
        try rig.put("vm1", 5, randomBytes(Int(Self.blockSize), seed: 50))
        try rig.put("vm1", 6, randomBytes(Int(Self.blockSize), seed: 60))
        try volume.trim(at: 10 * Self.blockSize, length: 3 * Self.blockSize, fua: false)
        for block in UInt64(10)..<13 { rig.expected["vm1"]![block] = [UInt8](repeating: 0, count: Int(Self.blockSize)) }
        try rig.put("vm1", 60, randomBytes(Int(Self.blockSize), seed: 600))
        let blocks = 64
        let model = (0..<UInt64(blocks)).flatMap { rig.expected["vm1"]![$0] ?? [UInt8](repeating: 0, count: Int(Self.blockSize)) }
        func modelBytes(_ first: UInt64, _ count: Int) -> [UInt8] {
            Array(model[(Int(first) * Int(Self.blockSize))..<((Int(first) + count) * Int(Self.blockSize))])
        }

        // What the overlay decides needs no node: one block, a run, an unmapped run.
        for (first, count) in [(UInt64(5), 1), (5, 2), (10, 3), (11, 1), (60, 1)] {
            let started = startRead(volume, block: first, count: count)
            #expect(started?.done == true, "blocks \(first)+\(count)")
            #expect(started?.bytes == modelBytes(first, count), "blocks \(first)+\(count)")
        }
        // Anything the tree must answer needs a node read: declined.
        for (first, count) in [(UInt64(0), 1), (4, 2), (6, 2), (9, 5), (0, blocks)] {
            #expect(startRead(volume, block: first, count: count) == nil, "blocks \(first)+\(count)")
        }

        // The synchronous path reads the nodes; then both paths give the same bytes.
        #expect(try read(volume, 0, model.count) == model)
        let whole = startRead(volume, block: 0, count: blocks)
        #expect(whole?.done == true)
        #expect(whole?.bytes == model)
        for block in UInt64(0)..<UInt64(blocks) {
            #expect(try read(volume, block * Self.blockSize, Int(Self.blockSize)) == modelBytes(block, 1), "block \(block)")
            #expect(startRead(volume, block: block, count: 1)?.bytes == modelBytes(block, 1), "block \(block)")
        }
        for (first, count) in [(UInt64(3), 5), (9, 5), (12, 40), (47, 17)] {
            #expect(try read(volume, first * Self.blockSize, count * Int(Self.blockSize)) == modelBytes(first, count))
            #expect(startRead(volume, block: first, count: count)?.bytes == modelBytes(first, count), "blocks \(first)+\(count)")
        }
    }
}
