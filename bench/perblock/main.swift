import BlockDevice
import CryptPool
import Foundation
import Keys

// Per-block CPU cost of the crypt engine without NBD: a pool on a memory
// device, one thread, process CPU time per request (best of the reps).

func cpuSeconds() -> Double {
    var now = timespec()
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &now)
    return Double(now.tv_sec) + Double(now.tv_nsec) / 1e9
}

/// Prints µs per block of `requests` requests of `blocks` blocks each.
func measure(_ name: String, reps: Int = 5, requests: Int, blocks: Int, _ body: (Int) throws -> Void) rethrows {
    var best = Double.infinity
    for _ in 0..<reps {
        let start = cpuSeconds()
        for index in 0..<requests { try body(index) }
        best = min(best, cpuSeconds() - start)
    }
    let perBlock = best / Double(requests * blocks) * 1e6
    print(name.padding(toLength: 28, withPad: " ", startingAt: 0) + String(format: "%8.3f µs/block %9.1f µs/request", perBlock, perBlock * Double(blocks)))
}

final class Bench {
    let volumeBlocks: UInt64 = 65_536  // 256 MiB
    var source = [UInt8](repeating: 0, count: 1 << 20)
    var sink = [UInt8](repeating: 0, count: 1 << 20)
    var random = SystemRandomNumberGenerator()

    init() {
        for index in source.indices { source[index] = UInt8(truncatingIfNeeded: (index &* 2_654_435_761) >> 13) }
    }

    func write(_ volume: Volume, _ offset: UInt64, _ count: Int) throws {
        try source.withUnsafeBytes { raw in
            try volume.write(at: offset, from: UnsafeRawBufferPointer(rebasing: raw[0..<count]), fua: false)
        }
    }

    func read(_ volume: Volume, _ offset: UInt64, _ count: Int) throws {
        try sink.withUnsafeMutableBytes { raw in
            try volume.read(at: offset, into: UnsafeMutableRawBufferPointer(rebasing: raw[0..<count]))
        }
    }

    func randomBlock() -> UInt64 { UInt64.random(in: 0..<volumeBlocks, using: &random) }

    func run() throws {
        let device = try MemoryBlockDevice(size: 1536 << 20)
        let passphrase = Array("bench".utf8)
        let pool = try Pool.format(
            storage: device, passphrase: passphrase, cost: ScryptCost(log2N: 10), anchor: nil,
            configuration: PoolConfiguration(checkpointRecords: 1 << 30, commitInterval: 3600)
        ).pool
        _ = try pool.createVolume(name: "v", size: volumeBlocks * 4096)
        let volume = try pool.volume(named: "v")
        for first in stride(from: 0, to: volumeBlocks, by: 256) { try write(volume, first * 4096, 1 << 20) }
        try volume.flush()

        try measure("1M seq write", reps: 3, requests: 256, blocks: 256) { index in try write(volume, UInt64(index) << 20, 1 << 20) }
        try measure("4k random write", requests: 20_000, blocks: 1) { _ in try write(volume, randomBlock() * 4096, 4096) }
        try measure("1M seq read (overlay)", requests: 256, blocks: 256) { index in try read(volume, UInt64(index) << 20, 1 << 20) }
        try measure("4k random read (overlay)", requests: 20_000, blocks: 1) { _ in try read(volume, randomBlock() * 4096, 4096) }
        try measure("1M write + flush", reps: 3, requests: 100, blocks: 256) { index in
            try write(volume, UInt64(index % 256) << 20, 1 << 20)
            try volume.flush()
        }
        try pool.close()

        // Reopened with a checkpoint bound of one record, the next flush
        // folds the log: reads then go through the tree.
        let reopened = try Pool.open(
            storage: device, secret: .passphrase(passphrase), anchor: nil,
            configuration: PoolConfiguration(checkpointRecords: 1, commitInterval: 3600))
        let treeVolume = try reopened.volume(named: "v")
        try write(treeVolume, 0, 4096)
        try treeVolume.flush()
        precondition(reopened.summary().logRecords == 0, "the log was not folded")
        try measure("1M seq read (tree)", requests: 256, blocks: 256) { index in try read(treeVolume, UInt64(index) << 20, 1 << 20) }
        try measure("4k random read (tree)", requests: 20_000, blocks: 1) { _ in try read(treeVolume, randomBlock() * 4096, 4096) }
        try reopened.close()
    }
}

try Bench().run()
