import BlockDevice
import Crypto
import Keys
import Logging
import PoolFormat
import Synchronization
import Threads
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
    /// The tree's places of recently hinted leaves (`placementHint`).
    let placements = PlacementMemo()

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
        try run { () throws(PoolError) in try readChecked(at: offset, into: buffer) }
    }

    /// NBD_CMD_WRITE; with `fua`, committed before returning.
    public func write(at offset: UInt64, from buffer: UnsafeRawBufferPointer, fua: Bool) throws(BlockDeviceError) {
        try checkRange(offset, UInt64(buffer.count))
        guard buffer.count > 0 else { return }
        let blocks = Self.blockRange(offset, UInt64(buffer.count))
        try run { () throws(PoolError) in
            try pool.reclaimingSpace { () throws(PoolError) in
                try pool.gate.withShared { () throws(PoolError) in try writeLocked(blocks, at: offset, from: buffer) }
            }
            if fua { try pool.flush() }
        }
    }

    /// The write under the shared gate: locks `blocks` of this volume and
    /// writes whole blocks directly, partial edge blocks by read-modify-write.
    private func writeLocked(_ blocks: Range<UInt64>, at offset: UInt64, from buffer: UnsafeRawBufferPointer) throws(PoolError) {
        try pool.ranges.withLock(key: id.rawValue, range: blocks) { () throws(PoolError) in
            let start = Int(offset - blocks.lowerBound * Self.blockSize)
            let total = Int(UInt64(blocks.count) * Self.blockSize)
            if start == 0, buffer.count == total {
                try writePlain(blocks, from: buffer)
                return
            }
            // Partial blocks: merge into the edge blocks' current plaintext.
            try withScratch(total) { (plain) throws(PoolError) in
                let edges = blocks.count == 1 ? [blocks.lowerBound] : [blocks.lowerBound, blocks.upperBound - 1]
                try readPlain(blocks, into: plain, only: edges)
                UnsafeMutableRawBufferPointer(rebasing: plain[start..<(start + buffer.count)]).copyMemory(from: buffer)
                try writePlain(blocks, from: UnsafeRawBufferPointer(plain))
            }
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

    /// A read reporting the pool's own error (NBD_CMD_READ and verification).
    /// Whole-block reads are opened in the caller's buffer; others go
    /// through a scratch buffer of whole blocks.
    func readChecked(at offset: UInt64, into buffer: UnsafeMutableRawBufferPointer) throws(PoolError) {
        let blocks = Self.blockRange(offset, UInt64(buffer.count))
        try pool.gate.withShared { () throws(PoolError) in
            try pool.ranges.withLock(key: id.rawValue, range: blocks) { () throws(PoolError) in
                let skip = Int(offset - blocks.lowerBound * Self.blockSize)
                let total = Int(UInt64(blocks.count) * Self.blockSize)
                if skip == 0, buffer.count == total {
                    try readPlain(blocks, into: buffer)
                    return
                }
                try withScratch(total) { (plain) throws(PoolError) in
                    try readPlain(blocks, into: plain)
                    buffer.copyMemory(from: UnsafeRawBufferPointer(rebasing: plain[skip..<(skip + buffer.count)]))
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
                    guard let dropped = state.volumes.update(id, { $0.overlay.unmap(blocks) }) else { throw .noSuchVolume(name) }
                    state.releaseAfterCommit += dropped
                    state.pending.append(
                        .unmap(volume: id, start: LogicalBlock(blocks.lowerBound), count: UInt64(blocks.count)))
                }
            }
        }
    }

    /// Current pointers of `blocks`: the overlay first, then the checkpointed
    /// tree for the runs of blocks the overlay leaves to it, written over
    /// their `leftToTree` marks. With `cachedOnly`, nil when a tree node is
    /// not in the cache. The result is the only array made, one block or many.
    private func pointers(_ blocks: Range<UInt64>, cachedOnly: Bool = false) throws(PoolError) -> [BlockPointer]? {
        var result: [BlockPointer] = []
        result.reserveCapacity(blocks.count)
        let found = pool.state.withLock { state in
            state.volumes.update(id) { volume in
                var undecided = 0
                for block in blocks {
                    if let decided = volume.decided(block) {
                        result.append(decided)
                    } else {
                        result.append(Self.leftToTree)
                        undecided += 1
                    }
                }
                return (undecided, volume.root, volume.depth)
            }
        }
        guard let (undecided, root, depth) = found else { throw .noSuchVolume(name) }
        guard undecided > 0 else { return result }
        let tree = TreeIdentity(kind: .volumeTreeNode, object: id.rawValue, depth: depth, volumeName: name)
        var index = 0
        while index < result.count {
            guard result[index] == Self.leftToTree else {
                index += 1
                continue
            }
            // A run the overlay leaves to the tree: one walk down for the run.
            var end = index + 1
            while end < result.count, result[end] == Self.leftToTree { end += 1 }
            let run = (blocks.lowerBound + UInt64(index))..<(blocks.lowerBound + UInt64(end))
            guard try pool.lookup(root: root, tree: tree, range: run, cachedOnly: cachedOnly, into: &result, at: index) else { return nil }
            index = end
        }
        return result
    }

    /// Marks, in `pointers`' result, a block the overlay leaves to the tree
    /// until the tree's pointer replaces it. No overlay entry is this: writes
    /// and log replay map only places inside the pool, and this place is
    /// outside any, so a mark left behind would fail the placement check
    /// (an error, never zeroes or another block).
    private static let leftToTree = BlockPointer(
        block: .max, salt: .zero, counter: NonceCounter(rawValue: .max), generation: .max, tag: .zero)

    /// Runs `body` with a zeroed scratch buffer of `count` bytes, zeroed
    /// again afterwards since it holds plaintext.
    private func withScratch(_ count: Int, _ body: (UnsafeMutableRawBufferPointer) throws(PoolError) -> Void) throws(PoolError) {
        let scratch = UnsafeMutableRawBufferPointer.allocate(byteCount: count, alignment: 64)
        scratch.initializeMemory(as: UInt8.self, repeating: 0)
        defer {
            zeroize(scratch)
            scratch.deallocate()
        }
        try body(scratch)
    }

    /// Reads and opens `blocks` into `plain` (whole blocks, the first at
    /// offset 0); with `only`, just those blocks (the ones a partial write
    /// merges into), the rest left untouched. The storage requests
    /// (`LocatedRead.planRequests`) go out as one batch, so a fragmented
    /// read still costs one storage round trip.
    private func readPlain(_ blocks: Range<UInt64>, into plain: UnsafeMutableRawBufferPointer, only: [UInt64]? = nil) throws(PoolError) {
        let located = try locate(blocks, in: plain, only: only, cachedOnly: false)!
        try pool.readPieces(located.requests)
        try open(located)
    }

    /// Finds the blocks of a read, zeroing the unwritten ones in `plain`.
    /// With `cachedOnly`, nil when that would take a storage read (a tree
    /// node not in the cache).
    func locate(
        _ blocks: Range<UInt64>, in plain: UnsafeMutableRawBufferPointer, only: [UInt64]? = nil, cachedOnly: Bool
    ) throws(PoolError) -> LocatedRead? {
        let blockSize = Int(Self.blockSize)
        precondition(plain.count == blocks.count * blockSize)
        var located = LocatedRead(first: blocks.lowerBound, plain: plain)
        located.blocks.reserveCapacity(only?.count ?? blocks.count)
        let runs = only.map(contiguousLogicalRuns)
        for runIndex in 0..<(runs?.count ?? 1) {
            // Without `only`, the one run is the whole request: no array for it.
            let run = runs?[runIndex] ?? blocks
            guard let pointers = try pointers(run, cachedOnly: cachedOnly) else { return nil }
            for (offset, pointer) in pointers.enumerated() {
                let logical = run.lowerBound + UInt64(offset)
                if pointer.isNull {
                    let slot = located.slot(logical)
                    UnsafeMutableRawBufferPointer(rebasing: plain[slot..<(slot + blockSize)])
                        .initializeMemory(as: UInt8.self, repeating: 0)
                    continue
                }
                try pool.checkPlacement(pointer, what: "volume \(name) block \(logical)")
                located.blocks.append((logical, pointer))
            }
        }
        located.planRequests()
        return located
    }

    /// Opens every located block into place, once storage has filled them
    /// in; a large request's blocks are shared out over the cores
    /// (`ParallelWork`). The first failure, by position, is thrown.
    ///
    /// With `keepingCiphertext` (the synchronous path), a failure is the
    /// integrity error naming the block and the digest of what storage
    /// returned, which a block read in place keeps by opening from a copy.
    /// Without it (the fast path, which redoes any failure synchronously),
    /// blocks read in place are opened with no copy, a block's memcpy fewer
    /// each, and a failed one is zeroed and thrown as a plain I/O error.
    func open(_ located: LocatedRead, keepingCiphertext: Bool = true) throws(PoolError) {
        guard let first = located.blocks.first else { return }
        // The first block's sealer is found here, so pieces of a request
        // sealed in one session (almost all) take no lock on a helper.
        var primed = SealerCache(volume: self)
        _ = try primed.sealer(first.pointer.salt)
        let sealerCache = primed
        let firstFailure = Mutex<(index: Int, error: PoolError)?>(nil)
        ParallelWork.shared.run(count: located.blocks.count, grain: Self.parallelGrain) { range in
            var sealers = sealerCache
            for index in range {
                let (logical, pointer) = located.blocks[index]
                do throws(PoolError) {
                    try self.openData(
                        located.ciphertext(ofBlock: index), into: located.region(ofBlock: index), logical: logical, pointer: pointer,
                        sealer: sealers.sealer(pointer.salt), keepingCiphertext: keepingCiphertext)
                } catch {
                    firstFailure.withLock { first in
                        if first == nil || index < first!.index { first = (index, error) }
                    }
                    // The rest of this piece lies after the failure.
                    return
                }
            }
        }
        if let failure = firstFailure.withLock({ $0 }) { throw failure.error }
    }

    /// Blocks per piece when a request's cipher work is shared out: 64 KiB,
    /// enough to outweigh waking a helper (a few µs) many times over.
    static let parallelGrain = 16

    /// The data sealer of the last session a request (or a piece of it)
    /// met, so the pool's state lock is taken once per change of session,
    /// not per block.
    private struct SealerCache: Sendable {
        let volume: Volume
        var last: (SessionSalt, BlockSealer)?

        mutating func sealer(_ salt: SessionSalt) throws(PoolError) -> BlockSealer {
            if let last, last.0 == salt { return last.1 }
            let pool = volume.pool
            let id = volume.id
            let sealer = try pool.state.withLock { (state) throws(PoolError) in try pool.dataSealer(id, salt, in: &state) }
            last = (salt, sealer)
            return sealer
        }
    }

    /// Opens one sealed block, `sealed` (its place in `region`, or apart
    /// from it when it was read into a staging buffer), into `region`.
    private func openData(
        _ sealed: UnsafeRawBufferPointer, into region: UnsafeMutableRawBufferPointer, logical: UInt64, pointer: BlockPointer,
        sealer: BlockSealer, keepingCiphertext: Bool
    ) throws(PoolError) {
        let ad = AssociatedData.data(
            pool: pool.poolID, volume: id, block: LogicalBlock(logical), salt: pointer.salt, counter: pointer.counter)
        if !keepingCiphertext, sealed.baseAddress == UnsafeRawPointer(region.baseAddress) {
            do throws(SealError) {
                try sealer.openInPlace(region, tag: pointer.tag, counter: pointer.counter, associatedData: ad)
                return
            } catch {
                throw .storage(.io(operation: "volume \(name) block \(logical) did not open in place, to be read again", errno: EIO))
            }
        }
        do throws(SealError) {
            try sealer.open(sealed, into: region, tag: pointer.tag, counter: pointer.counter, associatedData: ad)
            return
        } catch {}
        // A failed open leaves the ciphertext as it was read in `sealed`:
        // in place it is put back, apart it is untouched.
        let failure = IntegrityFailure(
            volume: name, structure: "data block", index: logical, level: 0, physicalBlock: pointer.block,
            expectedTag: hex(pointer.tag), foundDigest: hex(SHA256.hash(data: sealed)))
        region.initializeMemory(as: UInt8.self, repeating: 0)
        logger.error("\(failure.description)")
        throw .integrity(failure)
    }

    /// Seals whole blocks into newly allocated places and maps them. The
    /// sealed blocks are laid out in physical order in one buffer, so each
    /// run of consecutive places is written with one storage request.
    private func writePlain(_ blocks: Range<UInt64>, from plain: UnsafeRawBufferPointer) throws(PoolError) {
        let sealed = try seal(blocks, from: plain)
        do {
            try pool.writePieces(sealed.pieces)
        } catch {
            abandon(sealed)
            throw error
        }
        try map(sealed)
    }

    /// Allocates places for `blocks` and seals `plain` into them. The
    /// caller writes the result to storage, then calls `map`, or `abandon`
    /// if the write failed.
    func seal(_ blocks: Range<UInt64>, from plain: UnsafeRawBufferPointer) throws(PoolError) -> SealedWrite {
        let count = blocks.count
        let blockSize = Int(Self.blockSize)
        precondition(plain.count == count * blockSize)
        let hint = try placementHint(for: blocks)
        // One trip through the state lock for places, counters, the sealer
        // and the generation the pointers carry.
        let (locations, salt, firstCounter, sealer, generation) = try pool.state.withLock {
            (state) throws(PoolError) -> ([PhysicalBlock], SessionSalt, UInt64, BlockSealer, UInt64) in
            guard state.volumes.update(id, { _ in () }) != nil else { throw .noSuchVolume(name) }
            let locations = try pool.allocateData(count, near: hint, in: &state)
            let (salt, first) = pool.reserveDataCounters(id, count, in: &state)
            return (locations, salt, first, try pool.dataSealer(id, salt, in: &state), state.generation + 1)
        }
        let write = SealedWrite(blocks: blocks, locations: locations, epoch: pool.storageEpoch)
        let poolID = pool.poolID
        let volume = id
        // SAFETY: `plain` outlives the call, which returns only when every
        // piece has run; pieces write disjoint blocks and pointers.
        nonisolated(unsafe) let plain = plain
        write.pointers.withUnsafeMutableBufferPointer { pointers in
            nonisolated(unsafe) let pointers = pointers
            ParallelWork.shared.run(count: count, grain: Self.parallelGrain) { range in
                for position in range {
                    let index = write.logicalIndex(at: position)
                    let logical = blocks.lowerBound + UInt64(index)
                    let counter = NonceCounter(rawValue: firstCounter + UInt64(index))
                    let ad = AssociatedData.data(pool: poolID, volume: volume, block: LogicalBlock(logical), salt: salt, counter: counter)
                    var pointer = BlockPointer(block: locations[index], salt: salt, counter: counter, generation: generation, tag: .zero)
                    sealer.seal(
                        UnsafeRawBufferPointer(rebasing: plain[(index * blockSize)..<((index + 1) * blockSize)]),
                        into: UnsafeMutableRawBufferPointer(rebasing: write.sealed[(position * blockSize)..<((position + 1) * blockSize)]),
                        tag: &pointer.tag, counter: counter, associatedData: ad)
                    pointers[index] = pointer
                }
            }
        }
        return write
    }

    /// Gives back the places of a write that did not reach storage.
    func abandon(_ write: SealedWrite) {
        pool.state.withLock { state in for block in write.locations { state.space.release(block) } }
    }

    /// Maps the blocks of a write that storage has acknowledged.
    func map(_ write: SealedWrite) throws(PoolError) {
        try pool.state.withLock { (state) throws(PoolError) in
            guard state.noteWrites(volume: id, from: write.blocks.lowerBound, pointers: write.pointers, since: write.epoch) else {
                throw .noSuchVolume(name)
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
            throw deviceError(error)
        }
    }

    func deviceError(_ error: PoolError) -> BlockDeviceError {
        switch error {
        case .storage(let underlying): underlying
        case .noSpace: .noSpace
        default: .io(operation: "volume \(name): \(error)", errno: EIO)
        }
    }
}
