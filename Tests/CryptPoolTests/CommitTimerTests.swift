import BlockDevice
import Foundation
import Keys
import Testing
import Threads

@testable import CryptPool

/// The commit timer (docs/format.md, section 7): writes nobody flushes are
/// committed within the interval, and the thread ends with the pool.
@Suite struct CommitTimerTests {
    /// Whether `device` opened as a separate pool (a restarted crypt domain
    /// that never saw a close) holds `expected` at the start of volume "v".
    func durable(_ device: MemoryBlockDevice, _ expected: [UInt8]) throws -> Bool {
        let restarted = try Pool.open(
            storage: device, secret: .passphrase(passphrase), anchor: nil, configuration: PoolConfiguration(commitInterval: 0))
        return try read(try restarted.volume(named: "v"), 0, expected.count) == expected
    }

    @Test func unflushedWritesBecomeDurableWithinTheInterval() throws {
        let interval = 0.5
        let device = try MemoryBlockDevice(size: 16 << 20)
        let pool = try Pool.format(
            storage: device, passphrase: passphrase, cost: testCost, anchor: nil,
            configuration: PoolConfiguration(commitInterval: interval)
        ).pool
        #expect(pool.commitTimer?.isRunning == true)
        try pool.createVolume(name: "v", size: 1 << 20)
        let generation = pool.generation
        let data = randomBytes(8192, seed: 5)
        try write(try pool.volume(named: "v"), 0, data)
        let written = monotonicSeconds()

        // Polled, bounded: the commit is due `interval` after the write; the
        // limit leaves room for a loaded machine.
        var visibleAfter: Double?
        while visibleAfter == nil, monotonicSeconds() - written < interval + 5 {
            if try durable(device, data) { visibleAfter = monotonicSeconds() - written } else { Thread.sleep(forTimeInterval: 0.05) }
        }
        #expect(visibleAfter != nil, "the write never became durable without a FLUSH")
        if let visibleAfter { #expect(visibleAfter < interval + 2, "durable only after \(visibleAfter) s") }
        #expect(pool.generation > generation)
        #expect(!pool.isDirty)

        try pool.close()
        #expect(pool.commitTimer?.isRunning == false, "the commit thread must be gone once close returns")
    }

    @Test func zeroIntervalDisablesTheTimer() throws {
        let device = try MemoryBlockDevice(size: 16 << 20)
        let pool = try Pool.format(
            storage: device, passphrase: passphrase, cost: testCost, anchor: nil, configuration: PoolConfiguration(commitInterval: 0)
        ).pool
        #expect(pool.commitTimer == nil)
        try pool.createVolume(name: "v", size: 1 << 20)
        let data = randomBytes(4096, seed: 6)
        try write(try pool.volume(named: "v"), 0, data)
        Thread.sleep(forTimeInterval: 0.3)
        #expect(pool.isDirty)
        #expect(try !durable(device, data))
    }

    /// Uncommitted records reaching `hurriedCommitRecords` are committed at
    /// once, not an interval later, so that they and the commit's buffers
    /// stay bounded however fast the writes come.
    @Test func recordsAtTheBoundAreCommittedAtOnce() throws {
        let device = try MemoryBlockDevice(size: 16 << 20)
        let pool = try Pool.format(
            storage: device, passphrase: passphrase, cost: testCost, anchor: nil,
            configuration: PoolConfiguration(commitInterval: 3600, hurriedCommitRecords: 100)
        ).pool
        try pool.createVolume(name: "v", size: 1 << 20)
        let generation = pool.generation
        let volume = try pool.volume(named: "v")
        let data = randomBytes(100 * 4096, seed: 7)
        try write(volume, 0, data)
        // The next write finds 100 records uncommitted and hurries the timer.
        try write(volume, 100 * 4096, randomBytes(4096, seed: 8))
        let written = monotonicSeconds()
        while pool.generation == generation, monotonicSeconds() - written < 10 { Thread.sleep(forTimeInterval: 0.02) }
        #expect(pool.generation > generation, "nothing committed although the records reached the bound")
        _ = pool.commits.wait(until: { !$0.running }, timeout: 10) { _ in () }
        #expect(try durable(device, data))
        try pool.close()
    }

    @Test func abandonedPoolStopsItsTimer() throws {
        let device = try MemoryBlockDevice(size: 16 << 20)
        var pool: Pool? = try Pool.format(
            storage: device, passphrase: passphrase, cost: testCost, anchor: nil,
            configuration: PoolConfiguration(commitInterval: 0.2)
        ).pool
        let timer = try #require(pool?.commitTimer)
        #expect(timer.isRunning)
        pool = nil
        let released = monotonicSeconds()
        while timer.isRunning, monotonicSeconds() - released < 5 { Thread.sleep(forTimeInterval: 0.02) }
        #expect(!timer.isRunning, "the thread of a pool nobody holds must end")
    }
}
