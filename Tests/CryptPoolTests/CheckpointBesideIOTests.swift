import BlockDevice
import Foundation
import Testing
import TestSupport
import Threads

@testable import CryptPool

/// A checkpoint that a FLUSH brings on runs beside reads and writes
/// (Checkpoint.swift, `besideIO`): it takes the gate only to begin and to
/// switch to its trees. Here its storage flush is held, so the checkpoint
/// stands still halfway while the volume is written, trimmed and read.
@Suite struct CheckpointBesideIOTests {
    static let blocks = 2048
    static let blockSize = 4096

    /// A pool with one volume of `blocks` blocks, written whole, on a device
    /// whose flushes can be held; the free blocks of the empty volume.
    func filledPool(checkpointRecords: Int = 65_536) throws -> (
        device: FlushHoldingDevice, pool: Pool, volume: Volume, model: [UInt8], freeWhenEmpty: UInt64
    ) {
        let device = try FlushHoldingDevice(size: 64 << 20)
        let pool = try Pool.format(
            storage: device, passphrase: passphrase, cost: testCost, anchor: nil,
            configuration: PoolConfiguration(checkpointRecords: checkpointRecords, commitInterval: 0)
        ).pool
        try pool.createVolume(name: "v", size: UInt64(Self.blocks * Self.blockSize))
        let freeWhenEmpty = pool.summary().freeBlocks
        let volume = try pool.volume(named: "v")
        let model = randomBytes(Self.blocks * Self.blockSize, seed: 21)
        try write(volume, 0, model)
        return (device, pool, volume, model, freeWhenEmpty)
    }

    /// Starts a checkpoint beside I/O on its own thread and waits until it
    /// stands at its held storage flush; returns what it ended with.
    func startHeldCheckpoint(_ pool: Pool, _ device: FlushHoldingDevice) -> Guarded<Result<Void, PoolError>?> {
        let outcome = Guarded<Result<Void, PoolError>?>(nil)
        device.hold()
        startThread {
            let result: Result<Void, PoolError>
            do throws(PoolError) {
                try pool.serialisedCommit { () throws(PoolError) in try pool.checkpoint(besideIO: true) }
                result = .success(())
            } catch {
                result = .failure(error)
            }
            outcome.update { $0 = result }
        }
        #expect(device.waitForHeldFlush(timeout: 10), "the checkpoint never reached its storage flush")
        return outcome
    }

    /// Overwrites blocks 100..<300 and trims 1000..<1200 of `model` through
    /// `volume`, then checks every block reads as the model says.
    func changeAndCheck(_ volume: Volume, _ model: inout [UInt8]) throws {
        let fresh = randomBytes(200 * Self.blockSize, seed: 22)
        try write(volume, 100 * UInt64(Self.blockSize), fresh)
        model.replaceSubrange((100 * Self.blockSize)..<(300 * Self.blockSize), with: fresh)
        try volume.trim(at: 1000 * UInt64(Self.blockSize), length: 200 * UInt64(Self.blockSize), fua: false)
        model.replaceSubrange((1000 * Self.blockSize)..<(1200 * Self.blockSize), with: [UInt8](repeating: 0, count: 200 * Self.blockSize))
        #expect(try read(volume, 0, model.count) == model)
    }

    /// Closes the pool and opens it again, checks the volume reads as
    /// `model`, then frees every block of it and folds that in: with no
    /// block leaked, the pool has as many free blocks as when the volume
    /// was new.
    func reopenAndCheck(_ pool: Pool, _ device: FlushHoldingDevice, _ model: [UInt8], freeWhenEmpty: UInt64) throws {
        try pool.close()
        let reopened = try Pool.open(
            storage: device, secret: .passphrase(passphrase), anchor: nil, configuration: PoolConfiguration(commitInterval: 0))
        let volume = try reopened.volume(named: "v")
        #expect(try read(volume, 0, model.count) == model)
        try volume.trim(at: 0, length: UInt64(Self.blocks * Self.blockSize), fua: false)
        try reopened.flush()
        try reopened.serialisedCommit { () throws(PoolError) in
            try reopened.gate.withExclusive { () throws(PoolError) in try reopened.checkpoint() }
        }
        #expect(reopened.summary().freeBlocks == freeWhenEmpty, "blocks leaked")
    }

    @Test func readsWritesAndTrimsGoOnWhileACheckpointRuns() throws {
        var (device, pool, volume, model, freeWhenEmpty) = try filledPool()
        let generation = pool.generation
        let outcome = startHeldCheckpoint(pool, device)

        // With the checkpoint halfway, I/O neither waits for it nor sees
        // anything but the newest data.
        try changeAndCheck(volume, &model)
        #expect(outcome.withLock { $0 } == nil, "the checkpoint ended while its flush was held")

        device.release()
        _ = outcome.wait(until: { $0 != nil }) { _ in () }
        if case .failure(let error) = try #require(outcome.withLock { $0 }) { Issue.record("the checkpoint failed: \(error)") }
        #expect(pool.generation > generation)
        #expect(try read(volume, 0, model.count) == model, "the switch to the new trees lost the writes made beside it")

        // The writes beside the checkpoint belong to the next commit.
        try pool.flush()
        try reopenAndCheck(pool, device, model, freeWhenEmpty: freeWhenEmpty)
    }

    @Test func aCheckpointThatFailsPutsItsChangesBackUnderTheNewerOnes() throws {
        var (device, pool, volume, model, freeWhenEmpty) = try filledPool()
        let generation = pool.generation
        let outcome = startHeldCheckpoint(pool, device)
        try changeAndCheck(volume, &model)

        device.release(failing: true)
        _ = outcome.wait(until: { $0 != nil }) { _ in () }
        guard case .failure = try #require(outcome.withLock { $0 }) else {
            Issue.record("the checkpoint succeeded although its storage flush failed")
            return
        }
        #expect(pool.generation == generation)
        #expect(try read(volume, 0, model.count) == model, "a failed checkpoint lost or reverted writes")

        // The folded changes and the newer ones commit and checkpoint as one.
        try pool.flush()
        try pool.serialisedCommit { () throws(PoolError) in try pool.checkpoint(besideIO: true) }
        #expect(pool.generation > generation)
        #expect(try read(volume, 0, model.count) == model)
        try reopenAndCheck(pool, device, model, freeWhenEmpty: freeWhenEmpty)
    }

    /// Records written beside a checkpoint wait for the commit its end
    /// allows; once they reach the bound, writes wait for that end too, so
    /// what the crypt domain holds stays bounded however fast writes come.
    @Test func writesPastTheRecordBoundWaitForTheCheckpoint() throws {
        var (device, pool, volume, model, freeWhenEmpty) = try filledPool(checkpointRecords: 256)
        let outcome = startHeldCheckpoint(pool, device)
        let first = randomBytes(300 * Self.blockSize, seed: 23)
        try write(volume, 0, first)
        model.replaceSubrange(0..<first.count, with: first)

        // 300 records are past the bound of 256: the next write waits.
        let late = randomBytes(Self.blockSize, seed: 24)
        let lateDone = Guarded<Bool?>(nil)
        let writer = volume
        startThread {
            let done = (try? write(writer, 1500 * UInt64(Self.blockSize), late)) != nil
            lateDone.update { $0 = done }
        }
        Thread.sleep(forTimeInterval: 0.3)
        #expect(lateDone.withLock { $0 } == nil, "a write past the bound went on beside the checkpoint")
        device.release()
        _ = lateDone.wait(until: { $0 != nil }) { _ in () }
        #expect(lateDone.withLock { $0 } == true)
        _ = outcome.wait(until: { $0 != nil }) { _ in () }
        model.replaceSubrange((1500 * Self.blockSize)..<(1501 * Self.blockSize), with: late)
        #expect(try read(volume, 0, model.count) == model)
        try pool.flush()
        try reopenAndCheck(pool, device, model, freeWhenEmpty: freeWhenEmpty)
    }

    /// Writers held back by checkpoint after checkpoint still get through:
    /// waiting for a checkpoint is not running out of space, whose retries
    /// are few (a first version answered ENOSPC after three checkpoints).
    @Test func writersHeldBackByCheckpointAfterCheckpointNeverFail() throws {
        let device = try MemoryBlockDevice(size: 64 << 20)
        let pool = try Pool.format(
            storage: device, passphrase: passphrase, cost: testCost, anchor: nil,
            configuration: PoolConfiguration(checkpointRecords: 64, commitInterval: 0, hurriedCommitRecords: 64)
        ).pool
        try pool.createVolume(name: "v", size: UInt64(Self.blocks * Self.blockSize))
        let volume = try pool.volume(named: "v")
        let failures = Guarded<[String]>([])
        let running = Guarded(0)
        for writer in 0..<16 {
            running.update { $0 += 1 }
            startThread {
                for index in 0..<600 {
                    let block = UInt64((index * 7 + writer * 128) % Self.blocks)
                    do {
                        try write(volume, block * UInt64(Self.blockSize), randomBytes(Self.blockSize, seed: UInt64(writer * 10_000 + index)))
                    } catch {
                        failures.update { $0.append("\(error)") }
                    }
                }
                running.update { $0 -= 1 }
            }
        }
        var checkpoints = 0
        while running.withLock({ $0 }) > 0 {
            let generation = pool.generation
            try pool.flush()
            if pool.generation > generation { checkpoints += 1 }
        }
        #expect(failures.withLock { $0 } == [])
        #expect(checkpoints >= 10, "too few checkpoints ran beside the writes to hold them back")
    }
}
