#if canImport(Glibc)
import Glibc
#endif
import BlockDevice
import PoolFormat
import TestSupport

@testable import CryptPool

/// Where the machine stops: after the first `index` recorded operations.
/// Writes issued after the last completed flush sit in a volatile cache;
/// `cacheSeed` picks which 512-byte sectors of them reached the disk (nil:
/// none did).
struct CrashPoint: CustomStringConvertible {
    var index: Int
    var cacheSeed: UInt64?

    var description: String { "crash after operation \(index)" + (cacheSeed.map { ", cache subset seed \($0)" } ?? "") }
}

/// What one crash point showed.
struct CrashOutcome {
    var recovered = true
    var problems: [String] = []
    var lostWrites = 0
    var scrubFailures = 0
    var notYetAPool = false
    var postRecoveryChecked = false
}

/// Builds the disk images a crash could leave from a recorded stream, and
/// checks that the pool recovers from each (after xfstests' dm-log-writes
/// replay).
final class CrashReplayer {
    let operations: [RecordedOperation]
    /// Index of the last flush before each position (-1: none).
    private var lastFlush: [Int] = []
    /// Index of the last `.durable` mark before each position (-1: none).
    private var lastDurable: [Int] = []
    /// Generation of the newest superblock made durable before each position.
    private var anchored: [UInt64?] = []
    private var formattedAt = Int.max
    /// The durable image and the flush it reflects, advanced as points go up.
    private var durable: [UInt8]
    private var durableThrough = -1
    private var contents: [UInt64: [UInt8]] = [:]

    init(_ operations: [RecordedOperation], size: UInt64) {
        self.operations = operations
        durable = [UInt8](repeating: 0, count: Int(size))
        var flush = -1
        var mark = -1
        var written: UInt64?
        var anchor: UInt64?
        for (index, operation) in operations.enumerated() {
            lastFlush.append(flush)
            lastDurable.append(mark)
            anchored.append(anchor)
            switch operation {
            case .flush:
                flush = index
                if let written { anchor = max(anchor ?? 0, written) }
            case .write(let offset, let bytes):
                for generation in Self.superblockGenerations(offset, bytes) { written = max(written ?? 0, generation) }
            case .mark(.durable):
                mark = index
            case .mark(.formatted):
                formattedAt = index
            default:
                break
            }
        }
        lastFlush.append(flush)
        lastDurable.append(mark)
        anchored.append(anchor)
    }

    /// Positions just after each flush.
    var flushBoundaries: [Int] {
        operations.indices.filter { if case .flush = operations[$0] { true } else { false } }.map { $0 + 1 }
    }

    /// Generations of the superblocks a write carries (decoded without the key).
    static func superblockGenerations(_ offset: UInt64, _ bytes: [UInt8]) -> [UInt64] {
        var result: [UInt64] = []
        for slot in PoolLayout.superblockSlots {
            let start = Int64(slot * UInt64(blockSize)) - Int64(offset)
            guard start >= 0, start + Int64(blockSize) <= Int64(bytes.count) else { continue }
            let block = Array(bytes[Int(start)..<(Int(start) + blockSize)])
            if let (superblock, _, _) = try? Superblock.decode(block) { result.append(superblock.generation) }
        }
        return result
    }

    /// The image a crash at `point` can leave. Points must come in
    /// increasing order of `index`.
    func image(at point: CrashPoint) -> [UInt8] {
        let flush = lastFlush[point.index]
        if durableThrough < flush {
            for index in (durableThrough + 1)..<flush { apply(operations[index], to: &durable, keep: nil) }
            durableThrough = flush
        }
        var image = durable
        if let seed = point.cacheSeed {
            var random = SeededGenerator(seed: seed)
            for index in (flush + 1)..<point.index { apply(operations[index], to: &image, keep: { Bool.random(using: &random) }) }
        }
        return image
    }

    /// Sectors a cached write may be torn into.
    static let sectorSize = 512

    /// Applies a write or zeroing; with `keep`, only the 512-byte sectors it
    /// chooses (a disk persisting sectors of a cached write independently,
    /// so even a single 4 KiB block may be torn).
    private func apply(_ operation: RecordedOperation, to image: inout [UInt8], keep: (() -> Bool)?) {
        switch operation {
        case .write(let offset, let bytes):
            let unit = keep == nil ? bytes.count : Self.sectorSize
            var position = 0
            while position < bytes.count {
                let length = min(unit - Int((offset + UInt64(position)) % UInt64(unit)), bytes.count - position)
                if keep?() ?? true {
                    let target = Int(offset) + position
                    image.replaceSubrange(target..<(target + length), with: bytes[position..<(position + length)])
                }
                position += length
            }
        case .zero(let offset, let length):
            if keep?() ?? true {
                image.replaceSubrange(Int(offset)..<Int(offset + length), with: repeatElement(0, count: Int(length)))
            }
        case .flush, .mark:
            break
        }
    }

    /// What the consumer may find after a crash at `index`: per volume and
    /// block, the seeds that are acceptable (0: zeroes), and which volumes
    /// must and may exist.
    struct Expectation {
        var formatted: Bool
        var required: Set<String> = []
        var optional: Set<String> = []
        var base = ConsumerImage()
        var later: [String: [UInt64: Set<UInt64>]] = [:]

        func acceptable(_ volume: String, _ block: UInt64) -> Set<UInt64> {
            var seeds = later[volume]?[block] ?? []
            seeds.insert(base.volumes[volume]?[block] ?? 0)
            return seeds
        }
    }

    func expectation(at index: Int) -> Expectation {
        var expectation = Expectation(formatted: formattedAt < index)
        let mark = lastDurable[index]
        if mark >= 0, case .mark(.durable(let image)) = operations[mark] { expectation.base = image }
        expectation.required = Set(expectation.base.sizes.keys)
        for position in (mark + 1)..<index {
            guard case .mark(let event) = operations[position] else { continue }
            switch event {
            case .write(let volume, let first, let seeds):
                for (offset, seed) in seeds.enumerated() { expectation.later[volume, default: [:]][first + UInt64(offset), default: []].insert(seed) }
            case .zero(let volume, let blocks):
                for block in blocks { expectation.later[volume, default: [:]][block, default: []].insert(0) }
            case .createVolume(let name, _):
                expectation.optional.insert(name)
            case .deleteVolume(let name):
                expectation.required.remove(name)
                expectation.optional.insert(name)
            case .formatted, .durable:
                break
            }
        }
        return expectation
    }

    /// Opens the pool a crash at `point` left, scrubs it, checks every
    /// block against what the consumer wrote and flushed, and (with
    /// `postRecovery`) writes, commits and reopens it once more.
    func check(_ point: CrashPoint, postRecovery: Bool) -> CrashOutcome {
        var outcome = CrashOutcome()
        func problem(_ what: String) {
            outcome.recovered = false
            outcome.problems.append("\(point): \(what)")
        }
        let expectation = expectation(at: point.index)
        let device: MemoryBlockDevice
        do { device = try MemoryBlockDevice(contents: image(at: point)) } catch {
            problem("cannot build the image: \(error)")
            return outcome
        }
        let anchor = MemoryTrustAnchor(generation: anchored[point.index])
        let pool: Pool
        do {
            pool = try Pool.open(
                storage: device, secret: .passphrase(testPassphrase), anchor: anchor, configuration: CrashWorkload.configuration)
        } catch {
            if expectation.formatted { problem("does not open: \(error)") } else { outcome.notYetAPool = true }
            return outcome
        }
        let report = pool.verify()
        outcome.scrubFailures = report.failures.count
        if !report.failures.isEmpty { problem("scrub: \(report.failures.map(\.description))") }

        let names = Set(pool.volumes.map(\.name))
        if !expectation.required.isSubset(of: names) { problem("volumes \(expectation.required.subtracting(names).sorted()) are missing") }
        let unexpected = names.subtracting(expectation.required).subtracting(expectation.optional)
        if !unexpected.isEmpty { problem("volumes \(unexpected.sorted()) should not exist") }

        for info in pool.volumes {
            guard let volume = try? pool.volume(named: info.name) else { continue }
            let bytes: [UInt8]
            do { bytes = try volume.readBytes(at: 0, count: Int(info.size)) } catch {
                problem("volume \(info.name) does not read: \(error)")
                continue
            }
            for block in 0..<(info.size / UInt64(blockSize)) {
                let start = Int(block) * blockSize
                let acceptable = expectation.acceptable(info.name, block)
                let found = acceptable.contains { seed in
                    bytes.withUnsafeBytes { raw in
                        seedBytes(seed).withUnsafeBytes { memcmp(raw.baseAddress! + start, $0.baseAddress!, blockSize) == 0 }
                    }
                }
                if !found {
                    outcome.lostWrites += 1
                    problem("volume \(info.name) block \(block) holds none of the seeds \(acceptable.sorted())")
                }
            }
        }

        if postRecovery, let target = pool.volumes.first {
            outcome.postRecoveryChecked = true
            do {
                let volume = try pool.volume(named: target.name)
                let fresh = (0..<8).map { UInt64(point.index) << 20 | UInt64($0) | 1 << 62 }
                for (index, seed) in fresh.enumerated() { try volume.writeBytes(at: UInt64(index * 3) * 4096, seedBytes(seed)) }
                try volume.flush()
                try pool.close()
                let again = try Pool.open(
                    storage: device, secret: .passphrase(testPassphrase), anchor: anchor, configuration: CrashWorkload.configuration)
                let report = again.verify()
                if !report.failures.isEmpty { problem("after recovery, write and reopen: scrub: \(report.failures.map(\.description))") }
                let reread = try again.volume(named: target.name)
                for (index, seed) in fresh.enumerated() where try reread.readBytes(at: UInt64(index * 3) * 4096, count: blockSize) != seedBytes(seed) {
                    problem("after recovery, write and reopen: block \(index * 3) of \(target.name) lost")
                }
            } catch {
                problem("after recovery, write and reopen failed: \(error)")
            }
        }
        return outcome
    }

    /// The contents a seed stands for, cached.
    private func seedBytes(_ seed: UInt64) -> [UInt8] {
        if let cached = contents[seed] { return cached }
        let bytes = blockContents(seed: seed)
        contents[seed] = bytes
        return bytes
    }
}
