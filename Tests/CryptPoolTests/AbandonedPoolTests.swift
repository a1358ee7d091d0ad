import BlockDevice
import Foundation
import Synchronization
import Testing
import TestSupport
import Threads

@testable import CryptPool

/// A pool dropped without close (as a crash does) is freed and its commit
/// timer ends, even when dropped dirty or while the timer commits; the
/// timer reaches its pool without keeping it alive (CommitTimer.swift).
@Suite struct AbandonedPoolTests {
    /// A new pool on `device` committing every `interval` seconds, with a 1 MiB volume "v".
    private func timedPool(on device: some BlockDevice, interval: Double) throws -> (Pool, Volume) {
        let pool = try Pool.format(
            storage: device, passphrase: passphrase, cost: testCost, anchor: nil,
            configuration: PoolConfiguration(commitInterval: interval)
        ).pool
        try pool.createVolume(name: "v", size: 1 << 20)
        return (pool, try pool.volume(named: "v"))
    }

    /// A dirty pool with a 2 ms poll, dropped at varying moments, over and
    /// over. The pool is freed, which its device shows (the pool is its
    /// only other holder), and its thread ends.
    @Test func abandonedDirtyPoolsAreFreedAndTheirTimersEnd() throws {
        for round in 0..<10 {
            var device = try MemoryBlockDevice(size: 16 << 20)
            let timer: CommitTimer
            do {
                let (pool, volume) = try timedPool(on: device, interval: 0.01)
                timer = try #require(pool.commitTimer)
                for block in 0..<16 { try write(volume, UInt64(block) * 4096, randomBytes(4096, seed: UInt64(round * 16 + block))) }
                #expect(timer.isRunning)
                Thread.sleep(forTimeInterval: Double(round % 5) * 0.002)
            }
            let dropped = monotonicSeconds()
            while timer.isRunning || !isKnownUniquelyReferenced(&device), monotonicSeconds() - dropped < 5 {
                Thread.sleep(forTimeInterval: 0.01)
            }
            #expect(!timer.isRunning, "round \(round): the thread of an abandoned pool must end")
            #expect(isKnownUniquelyReferenced(&device), "round \(round): the abandoned pool was not freed")
        }
    }

    /// The pool is dropped while its timer is inside a commit (held at the
    /// storage flush): the drop returns at once, the commit finishes on the
    /// pool, which the timer holds until then, and the pool is freed on
    /// the timer's thread, which then ends.
    @Test func poolDroppedDuringATimedCommitIsFreedWhenTheCommitEnds() throws {
        var device = try FlushHoldingDevice(size: 16 << 20)
        let dropped = Guarded(false)
        let timer: CommitTimer
        do {
            let (pool, volume) = try timedPool(on: device, interval: 0.05)
            timer = try #require(pool.commitTimer)
            device.hold()
            try write(volume, 0, randomBytes(4096, seed: 9))
            #expect(device.waitForHeldFlush(timeout: 5), "the timer never committed the write")
            // The last references go on another thread, so that a drop that
            // waited for the held commit would fail the test, not hang it.
            let holder = Mutex<(Pool, Volume)?>((pool, volume))
            startThread {
                holder.withLock { $0 = nil }
                dropped.update { $0 = true }
            }
        }
        let returned = dropped.wait(until: { $0 }, timeout: 5) { _ in true } ?? false
        #expect(returned, "dropping the pool waited for the timer's commit")
        #expect(timer.isRunning, "the timer ended in the middle of its commit")
        #expect(!isKnownUniquelyReferenced(&device), "the pool was freed in the middle of its commit")
        device.release()
        let released = monotonicSeconds()
        while timer.isRunning || !isKnownUniquelyReferenced(&device), monotonicSeconds() - released < 5 {
            Thread.sleep(forTimeInterval: 0.01)
        }
        #expect(!timer.isRunning, "the thread of an abandoned pool must end")
        #expect(isKnownUniquelyReferenced(&device), "the abandoned pool was not freed")
    }
}

/// A memory device whose flushes wait while it is held, and may then fail.
final class FlushHoldingDevice: ForwardingBlockDevice {
    private struct Gate {
        var held = false
        var failing = false
        var waiting = 0
    }

    let inner: MemoryBlockDevice
    private let gate = Guarded(Gate())

    init(size: UInt64) throws {
        inner = try MemoryBlockDevice(size: size)
    }

    func hold() { gate.update { $0.held = true } }

    /// Lets waiting and later flushes through; with `failing`, the first
    /// of them fails instead.
    func release(failing: Bool = false) {
        gate.update {
            $0.held = false
            $0.failing = failing
        }
    }

    /// Whether a flush came and waits, within `timeout` seconds.
    func waitForHeldFlush(timeout: Double) -> Bool {
        gate.wait(until: { $0.waiting > 0 }, timeout: timeout) { _ in true } ?? false
    }

    func flush() throws(BlockDeviceError) {
        gate.update { $0.waiting += 1 }
        let fail = gate.wait(until: { !$0.held }) { gate -> Bool in
            gate.waiting -= 1
            defer { gate.failing = false }
            return gate.failing
        }!
        if fail { throw .io(operation: "flush (failed by the test)", errno: EIO) }
        try inner.flush()
    }
}
