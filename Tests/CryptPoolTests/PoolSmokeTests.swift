import BlockDevice
import Foundation
import Keys
import PoolFormat
import Testing

@testable import CryptPool

/// A cheap scrypt cost so tests do not spend a second per unlock.
let testCost = ScryptCost(log2N: 10)
let passphrase = Array("correct horse battery staple".utf8)

func randomBytes(_ count: Int, seed: UInt64) -> [UInt8] {
    var state = seed &+ 0x9E37_79B9_7F4A_7C15
    return (0..<count).map { _ in
        state = state &* 6_364_136_223_846_793_005 &+ 1_442_695_040_888_963_407
        return UInt8(truncatingIfNeeded: state >> 33)
    }
}

func read(_ volume: Volume, _ offset: UInt64, _ count: Int) throws -> [UInt8] {
    var bytes = [UInt8](repeating: 0xEE, count: count)
    var failure: BlockDeviceError?
    bytes.withUnsafeMutableBytes { buffer in
        do throws(BlockDeviceError) { try volume.read(at: offset, into: buffer) } catch { failure = error }
    }
    if let failure { throw failure }
    return bytes
}

func write(_ volume: Volume, _ offset: UInt64, _ bytes: [UInt8], fua: Bool = false) throws {
    var failure: BlockDeviceError?
    bytes.withUnsafeBytes { buffer in
        do throws(BlockDeviceError) { try volume.write(at: offset, from: buffer, fua: fua) } catch { failure = error }
    }
    if let failure { throw failure }
}

@Suite struct PoolSmokeTests {
    @Test func formatWriteReopenRead() throws {
        let device = try MemoryBlockDevice(size: 64 << 20)
        let anchorDirectory = FileManager.default.temporaryDirectory.appendingPathComponent("anchor-\(UUID())").path
        defer { try? FileManager.default.removeItem(atPath: anchorDirectory) }
        let anchor = try FileTrustAnchor(directory: anchorDirectory)
        let formatted = try Pool.format(storage: device, passphrase: passphrase, cost: testCost, anchor: anchor)
        let pool = formatted.pool
        try pool.createVolume(name: "vm1", size: 16 << 20)
        let volume = try pool.volume(named: "vm1")
        #expect(try read(volume, 0, 8192) == [UInt8](repeating: 0, count: 8192))

        let aligned = randomBytes(64 << 10, seed: 1)
        try write(volume, 4096 * 10, aligned)
        let unaligned = randomBytes(10_000, seed: 2)
        try write(volume, 123_457, unaligned)
        #expect(try read(volume, 4096 * 10, aligned.count) == aligned)
        #expect(try read(volume, 123_457, unaligned.count) == unaligned)
        try volume.flush()

        let reopened = try Pool.open(storage: device, secret: .passphrase(passphrase), anchor: anchor)
        let again = try reopened.volume(named: "vm1")
        #expect(try read(again, 4096 * 10, aligned.count) == aligned)
        #expect(try read(again, 123_457, unaligned.count) == unaligned)

        let byRecovery = try Pool.open(
            storage: device, secret: .recovery(RecoveryKey(parsing: formatted.recoveryKey.formatted())), anchor: anchor)
        #expect(try read(byRecovery.volume(named: "vm1"), 123_457, unaligned.count) == unaligned)
    }

    @Test func checkpointsTrimAndDelete() throws {
        let device = try MemoryBlockDevice(size: 64 << 20)
        let pool = try Pool.format(
            storage: device, passphrase: passphrase, cost: testCost, anchor: nil,
            configuration: PoolConfiguration(checkpointRecords: 100)
        ).pool
        try pool.createVolume(name: "a", size: 8 << 20)
        try pool.createVolume(name: "b", size: 8 << 20)
        let a = try pool.volume(named: "a")
        let b = try pool.volume(named: "b")
        var expected = [UInt8](repeating: 0, count: 8 << 20)
        for round in 0..<5 {
            for index in 0..<60 {
                let block = UInt64((index * 37 + round * 11) % 2048)
                let data = randomBytes(4096, seed: UInt64(round * 1000 + index))
                try write(a, block * 4096, data)
                expected.replaceSubrange(Int(block * 4096)..<Int(block * 4096 + 4096), with: data)
            }
            try a.flush()
        }
        try write(b, 0, randomBytes(1 << 20, seed: 99))
        try a.trim(at: 0, length: 1 << 20, fua: false)
        expected.replaceSubrange(0..<(1 << 20), with: [UInt8](repeating: 0, count: 1 << 20))
        try a.flush()
        #expect(try read(a, 0, expected.count) == expected)
        let free = pool.freeBlocks
        try pool.deleteVolume(name: "b")
        #expect(pool.freeBlocks >= free + 256)

        let reopened = try Pool.open(storage: device, secret: .passphrase(passphrase), anchor: nil)
        #expect(reopened.volumes.map(\.name) == ["a"])
        #expect(try read(reopened.volume(named: "a"), 0, expected.count) == expected)
        #expect(reopened.freeBlocks == pool.freeBlocks)
    }
}
