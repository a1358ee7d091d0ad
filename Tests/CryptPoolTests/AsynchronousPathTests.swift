import BlockDevice
import PoolFormat
import Testing
import Threads

@testable import CryptPool

/// The volume's asynchronous fast path (Volume+Asynchronous.swift), over a
/// memory device whose requests complete inline: the same bytes as the
/// synchronous path, the same integrity failures, and a refusal (false)
/// wherever it would have to block.
@Suite struct AsynchronousPathTests {
    /// What a started request ended with; nil if it did not start.
    enum Started: Equatable {
        case done
        case failed(BlockDeviceError)
        case redo
    }

    static func outcome(_ outcome: AsynchronousOutcome) -> Started {
        switch outcome {
        case .done: .done
        case .failed(let error): .failed(error)
        case .redoSynchronously: .redo
        }
    }

    /// Starts a read and waits (boundedly) for its completion.
    func startRead(_ volume: Volume, _ offset: UInt64, _ count: Int) -> (Started?, [UInt8]) {
        let result = Guarded<(calls: Int, outcome: Started?)>((0, nil))
        var bytes = [UInt8](repeating: 0xEE, count: count)
        let started = bytes.withUnsafeMutableBytes { buffer in
            volume.startRead(at: offset, into: buffer) { outcome in
                result.update { $0 = ($0.calls + 1, Self.outcome(outcome)) }
            }
        }
        guard started else { return (nil, bytes) }
        let final = result.wait(until: { $0.calls > 0 }, timeout: 10) { $0 }
        #expect(final?.calls == 1)
        return (final?.outcome, bytes)
    }

    func startWrite(_ volume: Volume, _ offset: UInt64, _ bytes: [UInt8], fua: Bool = false) -> Started? {
        let result = Guarded<(calls: Int, outcome: Started?)>((0, nil))
        let started = bytes.withUnsafeBytes { buffer in
            volume.startWrite(at: offset, from: buffer, fua: fua) { outcome in
                result.update { $0 = ($0.calls + 1, Self.outcome(outcome)) }
            }
        }
        guard started else { return nil }
        let final = result.wait(until: { $0.calls > 0 }, timeout: 10) { $0 }
        #expect(final?.calls == 1)
        return final?.outcome
    }

    @Test func writesAndReadsMatchTheSynchronousPath() throws {
        let rig = try TamperRig(size: 16 << 20)
        try rig.pool.createVolume(name: "vm1", size: 4 << 20)
        let volume = try rig.pool.volume(named: "vm1")
        // Unwritten blocks read as zeroes without touching storage.
        let (zeroes, zeroBytes) = startRead(volume, 0, 16384)
        #expect(zeroes == .done)
        #expect(zeroBytes == [UInt8](repeating: 0, count: 16384))

        let data = randomBytes(64 << 10, seed: 7)
        #expect(startWrite(volume, 8 * 4096, data) == .done)
        #expect(try read(volume, 8 * 4096, data.count) == data)
        let other = randomBytes(3 * 4096, seed: 8)
        try write(volume, 40 * 4096, other)
        let (state, bytes) = startRead(volume, 40 * 4096, other.count)
        #expect(state == .done)
        #expect(bytes == other)
        // A read across written and unwritten blocks.
        let (mixed, mixedBytes) = startRead(volume, 6 * 4096, 4 * 4096)
        #expect(mixed == .done)
        #expect(mixedBytes == [UInt8](repeating: 0, count: 2 * 4096) + Array(data[0..<(2 * 4096)]))

        // Durable after a flush, like any write.
        try volume.flush()
        let reopened = try rig.reopen()
        #expect(try read(try reopened.volume(named: "vm1"), 8 * 4096, data.count) == data)
    }

    @Test func whatWouldBlockIsLeftToTheSynchronousPath() throws {
        let rig = try TamperRig(size: 16 << 20)
        try rig.pool.createVolume(name: "vm1", size: 4 << 20)
        let volume = try rig.pool.volume(named: "vm1")
        let block = randomBytes(4096, seed: 1)
        // Partial blocks need read-modify-write; FUA a commit; past the end an error.
        #expect(startRead(volume, 100, 4096).0 == nil)
        #expect(startRead(volume, 0, 100).0 == nil)
        #expect(startWrite(volume, 4096, Array(block[0..<512])) == nil)
        #expect(startWrite(volume, 4096, block, fua: true) == nil)
        #expect(startWrite(volume, 4 << 20, block) == nil)
        #expect(startRead(volume, (4 << 20) - 4096, 8192).0 == nil)
        // Blocks another request holds.
        rig.pool.ranges.withLock(key: volume.id.rawValue, range: 0..<4) {
            #expect(startWrite(volume, 4096, block) == nil)
            #expect(startRead(volume, 3 * 4096, 4096).0 == nil)
            #expect(startRead(volume, 4 * 4096, 4096).0 == .done)
        }
        // A checkpoint holds the gate exclusively.
        rig.pool.gate.withExclusive {
            #expect(startRead(volume, 0, 4096).0 == nil)
        }
    }

    /// The fast path opens in place keeping no copy of the ciphertext, so a
    /// block that fails is redone synchronously, which reports it exactly.
    @Test func aTamperedBlockRedoesTheStartedRead() throws {
        let rig = try TamperRig(size: 16 << 20)
        try rig.pool.createVolume(name: "vm1", size: 4 << 20)
        let volume = try rig.pool.volume(named: "vm1")
        #expect(startWrite(volume, 5 * 4096, randomBytes(4096, seed: 3)) == .done)
        let target = try rig.pointer("vm1", 5)
        rig.flipBit(target.block, byte: 100)
        let (state, bytes) = startRead(volume, 4 * 4096, 3 * 4096)
        #expect(state == .redo)
        // The failed block's bytes are not handed out.
        #expect(bytes[4096..<8192].allSatisfy { $0 == 0 })
        // What the NBD server then does: the synchronous read, which names the block.
        #expect(rig.readBlock("vm1", 5) == .failed(rig.dataFailure("vm1", 5, pointer: target)))
        #expect {
            try read(volume, 4 * 4096, 3 * 4096)
        } throws: { error in
            guard case BlockDeviceError.io(let operation, let code) = error else { return false }
            return code == 5 && operation.contains("volume vm1") && operation.contains("data block")
        }
    }

    /// Started writes and TRIMs of the same blocks, then a FLUSH and a crash
    /// (the pool dropped without closing): the log replays them in the order
    /// they were acknowledged.
    @Test func startedWritesAndTrimsReplayInOrderAfterACrash() throws {
        let rig = try TamperRig(size: 16 << 20)
        try rig.pool.createVolume(name: "vm1", size: 4 << 20)
        var volume = try rig.pool.volume(named: "vm1")
        let first = randomBytes(8 * 4096, seed: 11)
        let second = randomBytes(2 * 4096, seed: 12)
        #expect(startWrite(volume, 16 * 4096, first) == .done)
        try volume.trim(at: 16 * 4096, length: 8 * 4096, fua: false)
        #expect(startWrite(volume, 18 * 4096, second) == .done)
        try volume.flush()
        // Written after the last FLUSH: may or may not survive, but never torn.
        #expect(startWrite(volume, 30 * 4096, randomBytes(4096, seed: 13)) == .done)

        volume = try rig.reopen().volume(named: "vm1")
        let expected = [UInt8](repeating: 0, count: 2 * 4096) + second + [UInt8](repeating: 0, count: 4 * 4096)
        #expect(try read(volume, 16 * 4096, 8 * 4096) == expected)
        let (state, bytes) = startRead(volume, 16 * 4096, 8 * 4096)
        #expect(state == .done)
        #expect(bytes == expected)
        let unflushed = try read(volume, 30 * 4096, 4096)
        #expect(unflushed == randomBytes(4096, seed: 13) || unflushed == [UInt8](repeating: 0, count: 4096))
    }
}
