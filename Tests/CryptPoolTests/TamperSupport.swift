import BlockDevice
import Crypto
import Foundation
import Keys
import PoolFormat
import Testing

@testable import CryptPool

/// A formatted pool on a memory device whose raw bytes a test edits
/// between runs, as a hostile storage domain would. A "run" ends by
/// dropping the Pool; the next starts with Pool.open on the same bytes.
/// Remembers what was written so every read can be checked.
final class TamperRig {
    static let blockSize = PoolLayout.blockSize
    let device: MemoryBlockDevice
    let anchorDirectory: String
    let anchor: FileTrustAnchor
    let configuration: PoolConfiguration
    let recoveryKey: RecoveryKey
    let poolID: [UInt8]
    /// The pool of the current run.
    var pool: Pool
    /// The plaintext each written block should read back, per volume.
    var expected: [String: [UInt64: [UInt8]]] = [:]

    /// Formats a pool with the test passphrase. With `checkpointEveryFlush`,
    /// every flush also checkpoints, so data ends up in the volume trees.
    init(size: UInt64 = 8 << 20, useAnchor: Bool = true, checkpointEveryFlush: Bool = false) throws {
        device = try MemoryBlockDevice(size: size)
        anchorDirectory = FileManager.default.temporaryDirectory.appendingPathComponent("bulkhead-tamper-\(UUID())").path
        anchor = try FileTrustAnchor(directory: anchorDirectory)
        configuration = PoolConfiguration(checkpointRecords: checkpointEveryFlush ? 1 : 65_536)
        let formatted = try Pool.format(
            storage: device, passphrase: passphrase, cost: testCost, anchor: useAnchor ? anchor : nil, configuration: configuration)
        pool = formatted.pool
        recoveryKey = formatted.recoveryKey
        poolID = formatted.pool.poolID
    }

    deinit { try? FileManager.default.removeItem(atPath: anchorDirectory) }

    // MARK: Runs

    /// Ends the current run and opens the pool again from the raw bytes.
    func reopen(anchor useAnchor: Bool = true, secret: KeyslotSecret? = nil) throws(PoolError) -> Pool {
        pool = try Pool.open(
            storage: device, secret: secret ?? .passphrase(passphrase), anchor: useAnchor ? anchor : nil, configuration: configuration)
        return pool
    }

    /// Pool.open's error, or nil if it opened (then `pool` is the new run).
    func openError(anchor useAnchor: Bool = true, secret: KeyslotSecret? = nil) -> PoolError? {
        do {
            _ = try reopen(anchor: useAnchor, secret: secret)
            return nil
        } catch {
            return error
        }
    }

    // MARK: Writing through the pool

    /// Writes `count` blocks of distinct recognisable data from `first`.
    func fill(_ name: String, from first: UInt64, count: Int, seed: UInt64) throws {
        let volume = try pool.volume(named: name)
        for index in 0..<count {
            let block = first + UInt64(index)
            let data = randomBytes(Self.blockSize, seed: seed &* 1000 &+ block)
            try write(volume, block * UInt64(Self.blockSize), data)
            expected[name, default: [:]][block] = data
        }
    }

    func put(_ name: String, _ block: UInt64, _ data: [UInt8]) throws {
        try write(pool.volume(named: name), block * UInt64(Self.blockSize), data)
        expected[name, default: [:]][block] = data
    }

    // MARK: Engine internals

    func volumeState(_ name: String, in pool: Pool? = nil) throws -> VolumeState {
        try #require((pool ?? self.pool).state.withLock { $0.volumes.values.first { $0.name == name } })
    }

    /// Where logical block `block` of a volume lives now: the log overlay,
    /// else the checkpointed tree.
    func pointer(_ name: String, _ block: UInt64, in pool: Pool? = nil) throws -> BlockPointer {
        let pool = pool ?? self.pool
        let volume = try volumeState(name, in: pool)
        if let pointer = volume.overlay.lookup(block) { return pointer }
        return try pool.lookup(root: volume.root, tree: treeIdentity(volume), index: block)
    }

    func treeIdentity(_ volume: VolumeState) -> TreeIdentity {
        TreeIdentity(kind: .volumeTreeNode, object: volume.id.rawValue, depth: volume.depth, volumeName: volume.name)
    }

    /// The checkpointed tree node at `level` on the path to `block`, with the first index it covers.
    func treeNode(_ name: String, level: Int, above block: UInt64) throws -> (pointer: BlockPointer, firstIndex: UInt64) {
        let volume = try volumeState(name)
        let tree = treeIdentity(volume)
        var pointer = volume.root
        var current = volume.depth
        var first: UInt64 = 0
        while current > level {
            let node = try pool.loadNode(pointer, tree: tree, level: current, firstIndex: first)
            let span = childSpan(level: current)
            let slot = (block - first) / span
            first += slot * span
            pointer = node.children[Int(slot)]
            current -= 1
        }
        return (pointer, first)
    }

    // MARK: Raw device editing

    func rawBlock(_ block: PhysicalBlock) -> [UInt8] {
        var bytes = [UInt8](repeating: 0, count: Self.blockSize)
        bytes.withUnsafeMutableBytes { try! device.read(at: block * UInt64(Self.blockSize), into: $0) }
        return bytes
    }

    func setRawBlock(_ block: PhysicalBlock, _ bytes: [UInt8]) {
        precondition(bytes.count == Self.blockSize)
        bytes.withUnsafeBytes { try! device.write(at: block * UInt64(Self.blockSize), from: $0, fua: false) }
    }

    /// Flips one bit of a physical block; returns the block's new bytes.
    @discardableResult
    func flipBit(_ block: PhysicalBlock, byte: Int, bit: Int = 0) -> [UInt8] {
        var bytes = rawBlock(block)
        bytes[byte] ^= UInt8(1 << bit)
        setRawBlock(block, bytes)
        return bytes
    }

    func restore(_ image: [UInt8]) {
        image.withUnsafeBytes { try! device.write(at: 0, from: $0, fua: false) }
    }

    // MARK: Checking what the consumer receives

    enum ReadOutcome: Equatable {
        case data([UInt8])
        case failed(PoolError)
    }

    /// Reads one block through the volume's checked path (the same as
    /// NBD_CMD_READ, but reporting the pool's own error).
    func readBlock(_ name: String, _ block: UInt64, in pool: Pool? = nil) -> ReadOutcome {
        do {
            let volume = try (pool ?? self.pool).volume(named: name)
            var bytes = [UInt8](repeating: 0xEE, count: Self.blockSize)
            var failure: PoolError?
            bytes.withUnsafeMutableBytes { buffer in
                do throws(PoolError) { try volume.readChecked(at: block * UInt64(Self.blockSize), into: buffer) } catch { failure = error }
            }
            if let failure { return .failed(failure) }
            return .data(bytes)
        } catch {
            return .failed(error)
        }
    }

    /// Reads every block ever written and checks the consumer never
    /// receives wrong data: each read throws or returns exactly the data
    /// expected (`allowed` adds older contents a test accepts by name).
    /// Returns the blocks whose reads failed.
    @discardableResult
    func checkNoWrongData(
        in pool: Pool? = nil, expecting overrides: [String: [UInt64: [UInt8]]] = [:], sourceLocation: SourceLocation = #_sourceLocation
    ) -> [String: [UInt64: PoolError]] {
        var failed: [String: [UInt64: PoolError]] = [:]
        for (name, blocks) in expected {
            for (block, data) in blocks {
                let wanted = overrides[name]?[block] ?? data
                switch readBlock(name, block, in: pool) {
                case .data(let found):
                    #expect(found == wanted, "volume \(name) block \(block) returned wrong data", sourceLocation: sourceLocation)
                case .failed(let error):
                    failed[name, default: [:]][block] = error
                }
            }
        }
        return failed
    }

    /// The integrity failure the engine must report for a data block.
    func dataFailure(_ name: String, _ block: UInt64, pointer: BlockPointer) -> PoolError {
        .integrity(
            IntegrityFailure(
                volume: name, structure: "data block", index: block, level: 0, physicalBlock: pointer.block,
                expectedTag: hex(pointer.tag), foundDigest: hex(SHA256.hash(data: rawBlock(pointer.block)))))
    }

    /// The integrity failure the engine must report for a metadata block.
    func metadataFailure(
        _ kind: MetadataKind, volume: String? = nil, index: UInt64, level: Int, pointer: BlockPointer
    ) -> PoolError {
        .integrity(
            IntegrityFailure(
                volume: volume, structure: kind.description, index: index, level: level, physicalBlock: pointer.block,
                expectedTag: hex(pointer.tag), foundDigest: hex(SHA256.hash(data: rawBlock(pointer.block)))))
    }
}

/// Whether `haystack` contains `needle` anywhere (memchr for the first
/// byte, memcmp for the rest: fast enough for whole images in debug builds).
func contains(_ haystack: [UInt8], _ needle: [UInt8]) -> Bool {
    guard !needle.isEmpty else { return true }
    guard needle.count <= haystack.count else { return false }
    return haystack.withUnsafeBytes { hay in
        needle.withUnsafeBytes { pin in
            // SAFETY: every pointer stays inside `hay` (the scan stops
            // needle.count bytes before its end) or `pin`, both valid for
            // the duration of the closures.
            let base = hay.baseAddress!
            let last = hay.count - pin.count
            var offset = 0
            while offset <= last {
                guard let found = memchr(base + offset, Int32(pin[0]), last - offset + 1) else { return false }
                let position = base.distance(to: UnsafeRawPointer(found))
                if memcmp(base + position, pin.baseAddress!, pin.count) == 0 { return true }
                offset = position + 1
            }
            return false
        }
    }
}

extension TamperRig {
    /// Four commits, one in each superblock slot: generation 1 the format,
    /// 2 the creation of vm1 (16 MiB), 3 a commit of block 1 (log block
    /// L0), 4 a commit of block 2 (log block L1, pointing back at L0).
    static func fourGenerations(useAnchor: Bool) throws -> TamperRig {
        let rig = try TamperRig(useAnchor: useAnchor)
        try rig.pool.createVolume(name: "vm1", size: 16 << 20)
        try rig.fill("vm1", from: 1, count: 1, seed: 1)
        try rig.pool.flush()
        try rig.fill("vm1", from: 2, count: 1, seed: 2)
        try rig.pool.flush()
        #expect(rig.pool.generation == 4)
        return rig
    }

    /// The superblock slot that holds generation `generation`.
    static func slot(ofGeneration generation: UInt64) -> PhysicalBlock {
        PoolLayout.superblockSlots[Int(generation % UInt64(PoolLayout.superblockSlots.count))]
    }
}
