import BlockDevice
import Crypto
import Keys
import Logging
import PoolFormat
#if canImport(Glibc)
import Glibc
#endif

/// A volume of an open pool as a block device: the crypt filter over the
/// storage domain's device. Reads return exactly the plaintext last written
/// or an error; sub-block and unaligned requests are read-modify-write
/// under a lock on the blocks they touch.
public final class Volume: BlockDevice {
    let pool: Pool
    public let id: VolumeID
    public let name: String
    public let size: UInt64
    let logger = Logger(label: "bulkhead.volume")

    init(pool: Pool, info: VolumeInfo) {
        self.pool = pool
        self.id = info.id
        self.name = info.name
        self.size = info.size
    }

    public var isReadOnly: Bool { false }
    /// A flush commits the whole pool, so it covers writes made through
    /// every connection (NBD_FLAG_CAN_MULTI_CONN holds); unmapping is cheap,
    /// so zeroing is always fast.
    public var capabilities: BlockDeviceCapabilities { [.flush, .trim, .writeZeroes, .fastZero, .multiConnConsistent] }
    public var minimumBlockSize: UInt32 { 1 }

    static let blockSize = UInt64(PoolLayout.blockSize)

    /// NBD_CMD_READ.
    public func read(at offset: UInt64, into buffer: UnsafeMutableRawBufferPointer) throws(BlockDeviceError) {
        try checkRange(offset, UInt64(buffer.count))
        guard buffer.count > 0 else { return }
        let blocks = Self.blockRange(offset, UInt64(buffer.count))
        try run { () throws(PoolError) in
            try pool.gate.withShared { () throws(PoolError) in
                try pool.ranges.withLock(key: id.rawValue, range: blocks) { () throws(PoolError) in
                    let plain = try readPlain(blocks)
                    let skip = Int(offset - blocks.lowerBound * Self.blockSize)
                    plain.withUnsafeBytes { source in
                        buffer.copyMemory(from: UnsafeRawBufferPointer(rebasing: source[skip..<(skip + buffer.count)]))
                    }
                }
            }
        }
    }

    /// NBD_CMD_WRITE; with `fua`, committed before returning.
    public func write(at offset: UInt64, from buffer: UnsafeRawBufferPointer, fua: Bool) throws(BlockDeviceError) {
        try checkRange(offset, UInt64(buffer.count))
        guard buffer.count > 0 else { return }
        let blocks = Self.blockRange(offset, UInt64(buffer.count))
        try run { () throws(PoolError) in
            try pool.reclaimingSpace { () throws(PoolError) in try pool.gate.withShared { () throws(PoolError) in
                try pool.ranges.withLock(key: id.rawValue, range: blocks) { () throws(PoolError) in
                    let start = Int(offset - blocks.lowerBound * Self.blockSize)
                    let total = Int(UInt64(blocks.count) * Self.blockSize)
                    var plain: [UInt8]
                    if start == 0, buffer.count == total {
                        plain = Array(buffer)
                    } else {
                        plain = try readPlain(blocks, onlyEdges: true)
                        plain.withUnsafeMutableBytes { target in
                            UnsafeMutableRawBufferPointer(rebasing: target[start..<(start + buffer.count)]).copyMemory(from: buffer)
                        }
                    }
                    try writePlain(blocks, plain)
                    plain.withUnsafeMutableBytes { zeroize($0) }
                }
            } }
            if fua { try pool.flush() }
        }
    }

    /// NBD_CMD_FLUSH: commits the pool.
    public func flush() throws(BlockDeviceError) {
        try run { () throws(PoolError) in try pool.flush() }
    }

    /// NBD_CMD_TRIM: whole blocks inside the range are unmapped (they read
    /// as zeroes after); partial blocks at the edges are left alone.
    public func trim(at offset: UInt64, length: UInt64, fua: Bool) throws(BlockDeviceError) {
        try checkRange(offset, length)
        let first = (offset + Self.blockSize - 1) / Self.blockSize
        let end = (offset + length) / Self.blockSize
        try run { () throws(PoolError) in
            if first < end { try unmap(first..<end) }
            if fua { try pool.flush() }
        }
    }

    /// NBD_CMD_WRITE_ZEROES: whole blocks are unmapped, partial edges are
    /// zeroed by read-modify-write.
    public func writeZeroes(at offset: UInt64, length: UInt64, flags: ZeroFlags) throws(BlockDeviceError) {
        try checkRange(offset, length)
        guard length > 0 else { return }
        let first = (offset + Self.blockSize - 1) / Self.blockSize
        let end = (offset + length) / Self.blockSize
        if first >= end {
            // Entirely inside one or two partial blocks.
            try writeZeroBytes(at: offset, count: Int(length))
        } else {
            let head = first * Self.blockSize - offset
            let tail = offset + length - end * Self.blockSize
            if head > 0 { try writeZeroBytes(at: offset, count: Int(head)) }
            if tail > 0 { try writeZeroBytes(at: end * Self.blockSize, count: Int(tail)) }
            try run { () throws(PoolError) in try unmap(first..<end) }
        }
        if flags.contains(.fua) { try flush() }
    }

    // MARK: - Internals

    /// A read reporting the pool's own error, for verification.
    func readChecked(at offset: UInt64, into buffer: UnsafeMutableRawBufferPointer) throws(PoolError) {
        let blocks = Self.blockRange(offset, UInt64(buffer.count))
        try pool.gate.withShared { () throws(PoolError) in
            try pool.ranges.withLock(key: id.rawValue, range: blocks) { () throws(PoolError) in
                let plain = try readPlain(blocks)
                let skip = Int(offset - blocks.lowerBound * Self.blockSize)
                plain.withUnsafeBytes { source in
                    buffer.copyMemory(from: UnsafeRawBufferPointer(rebasing: source[skip..<(skip + buffer.count)]))
                }
            }
        }
    }

    /// Reads each block of a byte range alone and returns every failure.
    func scanBlocks(_ range: Range<UInt64>) -> [PoolError] {
        var failures: [PoolError] = []
        var scratch = [UInt8](repeating: 0, count: Int(Self.blockSize))
        for block in Self.blockRange(range.lowerBound, UInt64(range.count)) {
            scratch.withUnsafeMutableBytes { raw in
                do throws(PoolError) { try readChecked(at: block * Self.blockSize, into: raw) } catch { failures.append(error) }
            }
        }
        return failures
    }

    private func writeZeroBytes(at offset: UInt64, count: Int) throws(BlockDeviceError) {
        let zeroes = [UInt8](repeating: 0, count: count)
        var failure: BlockDeviceError?
        zeroes.withUnsafeBytes { raw in
            do throws(BlockDeviceError) { try write(at: offset, from: raw, fua: false) } catch { failure = error }
        }
        if let failure { throw failure }
    }

    static func blockRange(_ offset: UInt64, _ length: UInt64) -> Range<UInt64> {
        (offset / blockSize)..<((offset + length + blockSize - 1) / blockSize)
    }

    private func unmap(_ blocks: Range<UInt64>) throws(PoolError) {
        try pool.gate.withShared { () throws(PoolError) in
            try pool.ranges.withLock(key: id.rawValue, range: blocks) { () throws(PoolError) in
                try pool.state.withLock { (state) throws(PoolError) in
                    guard state.volumes[id] != nil else { throw .noSuchVolume(name) }
                    state.releaseAfterCommit += state.volumes[id]!.overlay.unmap(blocks)
                    state.pending.append(
                        .unmap(volume: id, start: LogicalBlock(blocks.lowerBound), count: UInt64(blocks.count)))
                }
            }
        }
    }

    /// Current pointers of `blocks`: the overlay first, then the checkpointed tree.
    private func pointers(_ blocks: Range<UInt64>) throws(PoolError) -> [BlockPointer] {
        let (decided, root, depth) = try pool.state.withLock { (state) throws(PoolError) in
            guard let volume = state.volumes[id] else { throw .noSuchVolume(name) }
            return (blocks.map { volume.overlay.lookup($0) }, volume.root, volume.depth)
        }
        let tree = TreeIdentity(kind: .volumeTreeNode, object: id.rawValue, depth: depth, volumeName: name)
        var result: [BlockPointer] = []
        result.reserveCapacity(blocks.count)
        for (index, block) in blocks.enumerated() {
            if let pointer = decided[index] {
                result.append(pointer)
            } else {
                result.append(try pool.lookup(root: root, tree: tree, index: block))
            }
        }
        return result
    }

    /// Reads and opens `blocks`; with `onlyEdges`, only the first and last
    /// (the ones a partial write merges into) are read, the rest left zero.
    private func readPlain(_ blocks: Range<UInt64>, onlyEdges: Bool = false) throws(PoolError) -> [UInt8] {
        var plain = [UInt8](repeating: 0, count: blocks.count * Int(Self.blockSize))
        var wanted = Array(blocks)
        if onlyEdges { wanted = Array(Set([blocks.lowerBound, blocks.upperBound - 1])).sorted() }
        var located: [(UInt64, BlockPointer)] = []
        for run in contiguousLogicalRuns(wanted) {
            let found = try pointers(run)
            for (offset, pointer) in found.enumerated() where !pointer.isNull {
                try pool.checkPlacement(pointer, what: "volume \(name) block \(run.lowerBound + UInt64(offset))")
                located.append((run.lowerBound + UInt64(offset), pointer))
            }
        }
        located.sort { $0.1.block < $1.1.block }
        for run in contiguousRuns(located.map(\.1.block)) {
            let ciphertext = try pool.readBlocks(located[run.start].1.block, count: run.count)
            for index in run.start..<(run.start + run.count) {
                let (logical, pointer) = located[index]
                let slice = ciphertext[((index - run.start) * Int(Self.blockSize))..<((index - run.start + 1) * Int(Self.blockSize))]
                let opened = try openData(slice, logical: logical, pointer: pointer)
                let target = Int(logical - blocks.lowerBound) * Int(Self.blockSize)
                plain.replaceSubrange(target..<(target + Int(Self.blockSize)), with: opened)
            }
        }
        return plain
    }

    private func openData(_ ciphertext: ArraySlice<UInt8>, logical: UInt64, pointer: BlockPointer) throws(PoolError) -> [UInt8] {
        let sealer = try pool.state.withLock { (state) throws(PoolError) in try pool.dataSealer(id, pointer.salt, in: &state) }
        let ad = AssociatedData.data(
            pool: pool.poolID, volume: id, block: LogicalBlock(logical), salt: pointer.salt, counter: pointer.counter)
        do {
            return try sealer.open(ciphertext, tag: pointer.tag, counter: pointer.counter, associatedData: ad)
        } catch {
            let failure = IntegrityFailure(
                volume: name, structure: "data block", index: logical, level: 0, physicalBlock: pointer.block,
                expectedTag: hex(pointer.tag), foundDigest: hex(SHA256.hash(data: ciphertext)))
            logger.error("\(failure.description)")
            throw .integrity(failure)
        }
    }

    /// Seals whole blocks into newly allocated places and maps them.
    private func writePlain(_ blocks: Range<UInt64>, _ plain: [UInt8]) throws(PoolError) {
        let count = blocks.count
        let (locations, salt, firstCounter, sealer) = try pool.state.withLock {
            (state) throws(PoolError) -> ([PhysicalBlock], SessionSalt, UInt64, BlockSealer) in
            guard state.volumes[id] != nil else { throw .noSuchVolume(name) }
            guard let locations = pool.allocateData(count, in: &state) else { throw .noSpace }
            let (salt, first) = pool.reserveDataCounters(id, count, in: &state)
            return (locations, salt, first, try pool.dataSealer(id, salt, in: &state))
        }
        let generation = pool.generation + 1
        var pointers: [BlockPointer] = []
        var writes: [(PhysicalBlock, [UInt8])] = []
        for (index, logical) in blocks.enumerated() {
            let counter = NonceCounter(rawValue: firstCounter + UInt64(index))
            let ad = AssociatedData.data(pool: pool.poolID, volume: id, block: LogicalBlock(logical), salt: salt, counter: counter)
            let start = index * Int(Self.blockSize)
            let sealed = sealer.seal(plain[start..<(start + Int(Self.blockSize))], counter: counter, associatedData: ad)
            writes.append((locations[index], sealed.ciphertext))
            pointers.append(BlockPointer(block: locations[index], salt: salt, counter: counter, generation: generation, tag: sealed.tag))
        }
        let epoch = pool.storageEpoch
        do {
            try pool.writeScattered(writes)
        } catch {
            pool.state.withLock { state in for block in locations { state.space.release(block) } }
            throw error
        }
        try pool.state.withLock { (state) throws(PoolError) in
            guard state.volumes[id] != nil else { throw .noSuchVolume(name) }
            state.notePendingWrites(since: epoch)
            // Mutated in place: a copy of the volume state would copy its
            // whole overlay on every write.
            for (index, logical) in blocks.enumerated() {
                let previous = state.volumes[id]!.overlay.mapped.updateValue(pointers[index], forKey: logical)
                if let previous, !previous.isNull { state.releaseAfterCommit.append(previous.block) }
                state.pending.append(.map(volume: id, block: LogicalBlock(logical), pointer: pointers[index]))
            }
        }
    }

    private func contiguousLogicalRuns(_ blocks: [UInt64]) -> [Range<UInt64>] {
        var runs: [Range<UInt64>] = []
        for block in blocks {
            if let last = runs.last, last.upperBound == block {
                runs[runs.count - 1] = last.lowerBound..<(block + 1)
            } else {
                runs.append(block..<(block + 1))
            }
        }
        return runs
    }

    /// Maps pool errors onto block device errors for the NBD server.
    private func run(_ body: () throws(PoolError) -> Void) throws(BlockDeviceError) {
        do {
            try pool.checkUsable()
            try body()
        } catch {
            switch error {
            case .storage(let underlying): throw underlying
            case .noSpace: throw .noSpace
            default: throw .io(operation: "volume \(name): \(error)", errno: EIO)
            }
        }
    }
}
