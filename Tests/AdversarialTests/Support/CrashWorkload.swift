import BlockDevice
import Keys
import TestSupport

@testable import CryptPool

/// What the consumer knows is on the pool: per volume, the seed of each
/// written block (absent: zeroes) and the volume's size in blocks.
struct ConsumerImage {
    var volumes: [String: [UInt64: UInt64]] = [:]
    var sizes: [String: UInt64] = [:]
}

/// A consumer action, marked in the recorded stream where it starts, and
/// the moments the consumer learns something is durable.
enum WorkloadEvent {
    /// `Pool.format` returned: every later crash point must open.
    case formatted
    case write(volume: String, firstBlock: UInt64, seeds: [UInt64])
    /// A trim or write-zeroes of whole blocks.
    case zero(volume: String, blocks: Range<UInt64>)
    case createVolume(String, blocks: UInt64)
    case deleteVolume(String)
    /// A FLUSH, FUA write, volume create or delete returned: this is what
    /// must be found after any later crash.
    case durable(ConsumerImage)
}

/// The recorded workload: format, volume create and delete, writes,
/// overwrites, trims, write-zeroes, FUA writes, flushes, keyslot changes
/// and checkpoints, chosen by a seeded generator.
struct CrashWorkload {
    static let deviceSize: UInt64 = 8 << 20
    // No commit timer: a recorded stream must not depend on timing.
    static let configuration = PoolConfiguration(checkpointRecords: 24, commitInterval: 0)

    let device: RecordingDevice
    /// Consumer flushes (and other durable points) the workload made.
    var durablePoints = 0
    var consumerWrites = 0

    init(seed: UInt64, rounds: Int = 28) throws {
        device = try RecordingDevice(size: Self.deviceSize)
        var random = SeededGenerator(seed: seed)
        var image = ConsumerImage()
        var nextSeed: UInt64 = seed << 32 | 1
        let pool = try Pool.format(
            storage: device, passphrase: testPassphrase, cost: testCost, anchor: nil, configuration: Self.configuration
        ).pool
        device.mark(.formatted)
        device.mark(.durable(image))

        func create(_ name: String, blocks: UInt64) throws {
            device.mark(.createVolume(name, blocks: blocks))
            try pool.createVolume(name: name, size: blocks * UInt64(blockSize))
            image.volumes[name] = [:]
            image.sizes[name] = blocks
            device.mark(.durable(image))
            durablePoints += 1
        }
        func delete(_ name: String) throws {
            device.mark(.deleteVolume(name))
            try pool.deleteVolume(name: name)
            image.volumes[name] = nil
            image.sizes[name] = nil
            device.mark(.durable(image))
            durablePoints += 1
        }
        try create("alpha", blocks: 256)
        try create("beta", blocks: 128)

        for round in 0..<rounds {
            switch round {
            case 6: try create("gamma", blocks: 64)
            case 11: try delete("beta")
            case 15:
                // Rewrites both header areas, with a flush after each.
                let slot = try pool.addKeyslot(.passphrase(Array("second".utf8)), cost: testCost)
                try pool.removeKeyslot(slot)
            case 18: try delete("gamma")
            case 20: try create("delta", blocks: 32)
            default: break
            }
            let names = image.sizes.keys.sorted()
            for _ in 0..<Int.random(in: 1...6, using: &random) {
                let name = names.randomElement(using: &random)!
                let volume = try pool.volume(named: name)
                let size = image.sizes[name]!
                let count = UInt64.random(in: 1...4, using: &random)
                let first = UInt64.random(in: 0..<(size - count), using: &random)
                switch Int.random(in: 0..<10, using: &random) {
                case 0:
                    device.mark(.zero(volume: name, blocks: first..<(first + count)))
                    try volume.trim(at: first * 4096, length: count * 4096, fua: false)
                    for block in first..<(first + count) { image.volumes[name]![block] = nil }
                case 1:
                    device.mark(.zero(volume: name, blocks: first..<(first + count)))
                    try volume.writeZeroes(at: first * 4096, length: count * 4096, flags: [])
                    for block in first..<(first + count) { image.volumes[name]![block] = nil }
                default:
                    let seeds = (0..<count).map { _ in
                        nextSeed += 1
                        return nextSeed
                    }
                    let fua = Int.random(in: 0..<10, using: &random) == 0
                    device.mark(.write(volume: name, firstBlock: first, seeds: seeds))
                    try volume.writeBytes(at: first * 4096, seeds.flatMap { blockContents(seed: $0) }, fua: fua)
                    for (index, seed) in seeds.enumerated() { image.volumes[name]![first + UInt64(index)] = seed }
                    consumerWrites += seeds.count
                    if fua {
                        device.mark(.durable(image))
                        durablePoints += 1
                    }
                }
            }
            if Int.random(in: 0..<10, using: &random) < 7 {
                try pool.volume(named: names[0]).flush()
                device.mark(.durable(image))
                durablePoints += 1
            }
        }
        try pool.close()
        device.mark(.durable(image))
        durablePoints += 1
    }
}
