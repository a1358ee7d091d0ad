import BlockDevice
import Crypto
import Keys
import PoolFormat

/// Reading and writing whole blocks of the pool device, and sealing and
/// opening metadata blocks.
extension Pool {
    static let blockSize = PoolLayout.blockSize

    func readBlocks(_ first: PhysicalBlock, count: Int) throws(PoolError) -> [UInt8] {
        var bytes = [UInt8](repeating: 0, count: count * Self.blockSize)
        var failure: BlockDeviceError?
        bytes.withUnsafeMutableBytes { buffer in
            do throws(BlockDeviceError) {
                try storage.read(at: first * UInt64(Self.blockSize), into: buffer)
            } catch { failure = error }
        }
        if let failure { throw .storage(failure) }
        return bytes
    }

    /// Reads whole blocks straight into `buffer`.
    func readBlocks(_ first: PhysicalBlock, into buffer: UnsafeMutableRawBufferPointer) throws(PoolError) {
        precondition(buffer.count % Self.blockSize == 0)
        do { try storage.read(at: first * UInt64(Self.blockSize), into: buffer) } catch { throw .storage(error) }
    }

    /// Reads whole blocks straight into each piece's buffer, every piece
    /// in one storage batch where the device can send one (a remote
    /// device: one round trip however fragmented the read), one by one
    /// otherwise.
    func readScattered(_ pieces: [(first: PhysicalBlock, buffer: UnsafeMutableRawBufferPointer)]) throws(PoolError) {
        guard pieces.count > 1 else {
            if let piece = pieces.first { try readBlocks(piece.first, into: piece.buffer) }
            return
        }
        for piece in pieces { precondition(piece.buffer.count % Self.blockSize == 0) }
        let reads = pieces.map { (offset: $0.first * UInt64(Self.blockSize), buffer: $0.buffer) }
        do {
            if let batch = asynchronousStorage {
                try batch.read(reads)
            } else {
                for piece in reads { try storage.read(at: piece.offset, into: piece.buffer) }
            }
        } catch { throw .storage(error) }
    }

    /// Reads `blocks` (sorted, so that neighbours form runs) in batches of
    /// at most `batchBlocks`, each batch one `readScattered`, and hands
    /// `body` each block's index in `blocks` and its bytes, in order.
    func readEach(
        _ blocks: [PhysicalBlock], batchBlocks: Int = 1024, _ body: (Int, ArraySlice<UInt8>) throws(PoolError) -> Void
    ) throws(PoolError) {
        var bytes = [UInt8](repeating: 0, count: min(blocks.count, batchBlocks) * Self.blockSize)
        for start in stride(from: 0, to: blocks.count, by: batchBlocks) {
            let end = min(start + batchBlocks, blocks.count)
            var failure: PoolError?
            bytes.withUnsafeMutableBytes { raw in
                let pieces = contiguousRuns(Array(blocks[start..<end])).map { run in
                    let bytes = (run.start * Self.blockSize)..<((run.start + run.count) * Self.blockSize)
                    return (blocks[start + run.start], UnsafeMutableRawBufferPointer(rebasing: raw[bytes]))
                }
                do throws(PoolError) { try readScattered(pieces) } catch { failure = error }
            }
            if let failure { throw failure }
            for index in start..<end {
                let offset = (index - start) * Self.blockSize
                try body(index, bytes[offset..<(offset + Self.blockSize)])
            }
        }
    }

    /// Writes whole blocks straight from `buffer`.
    func writeBlocks(_ first: PhysicalBlock, from buffer: UnsafeRawBufferPointer) throws(PoolError) {
        precondition(buffer.count % Self.blockSize == 0)
        do { try storage.write(at: first * UInt64(Self.blockSize), from: buffer, fua: false) } catch { throw .storage(error) }
    }

    func writeBlocks(_ first: PhysicalBlock, _ bytes: [UInt8]) throws(PoolError) {
        precondition(bytes.count % Self.blockSize == 0)
        var failure: BlockDeviceError?
        bytes.withUnsafeBytes { buffer in
            do throws(BlockDeviceError) {
                try storage.write(at: first * UInt64(Self.blockSize), from: buffer, fua: false)
            } catch { failure = error }
        }
        if let failure { throw .storage(failure) }
    }

    /// Writes sealed blocks, one request per run of consecutive blocks of
    /// at most `scatteredRequestBlocks`, gathered in one reused buffer: a
    /// checkpoint writes tens of thousands of blocks, mostly in one run.
    func writeScattered(_ blocks: [(PhysicalBlock, [UInt8])]) throws(PoolError) {
        let sorted = blocks.sorted { $0.0 < $1.0 }
        let runs = contiguousRuns(sorted.map(\.0))
        guard let longest = runs.map(\.count).max() else { return }
        let buffer = UnsafeMutableRawBufferPointer.allocate(
            byteCount: min(longest, Self.scatteredRequestBlocks) * Self.blockSize, alignment: 64)
        defer { buffer.deallocate() }
        for run in runs {
            for first in stride(from: run.start, to: run.start + run.count, by: Self.scatteredRequestBlocks) {
                let end = min(first + Self.scatteredRequestBlocks, run.start + run.count)
                for index in first..<end {
                    precondition(sorted[index].1.count == Self.blockSize, "a scattered write of a partial block")
                    let offset = (index - first) * Self.blockSize
                    UnsafeMutableRawBufferPointer(rebasing: buffer[offset..<(offset + Self.blockSize)]).copyBytes(from: sorted[index].1)
                }
                try writeBlocks(sorted[first].0, from: UnsafeRawBufferPointer(rebasing: buffer[..<((end - first) * Self.blockSize)]))
            }
        }
    }

    /// Blocks per storage request of `writeScattered` (1 MiB).
    static let scatteredRequestBlocks = 256

    func flushStorage() throws(PoolError) {
        do { try storage.flush() } catch { throw .storage(error) }
    }

    /// Checks that a pointer read from authenticated metadata points into
    /// the allocatable part of the pool.
    func checkPlacement(_ pointer: BlockPointer, what: @autoclosure () -> String) throws(PoolError) {
        guard pointer.block >= geometry.firstAllocatable || geometry.region(of: pointer.block) != nil,
            pointer.block < blockCount
        else { throw .malformed("\(what()) points at physical block \(pointer.block), outside the pool's allocatable blocks") }
    }

    func metadataSealer(_ salt: SessionSalt, in state: inout PoolState) -> BlockSealer {
        if let sealer = state.metadataSealers[salt] { return sealer }
        let sealer = keys.metadataKey(salt: salt)
        state.metadataSealers[salt] = sealer
        return sealer
    }

    func dataSealer(_ volume: VolumeID, _ salt: SessionSalt, in state: inout PoolState) throws(PoolError) -> BlockSealer {
        let key = VolumeSessionKey(volume: volume, salt: salt)
        if let sealer = state.dataSealers[key] { return sealer }
        guard let volumeState = state.volumes[volume] else { throw .malformed("data of unknown volume \(volume)") }
        let sealer = keys.dataKey(volume: volume, volumeKey: volumeState.key, salt: salt)
        state.dataSealers[key] = sealer
        return sealer
    }

    /// Reserves `count` consecutive counters under the session's metadata
    /// key, rolling the session over first if it would pass the bound.
    func reserveMetadataCounters(_ count: Int, in state: inout PoolState) -> (SessionSalt, UInt64) {
        if state.metadataCounter + UInt64(count) > maxSealsPerSessionKey { startSession(in: &state) }
        let first = state.metadataCounter
        state.metadataCounter += UInt64(count)
        return (state.session, first)
    }

    func reserveDataCounters(_ volume: VolumeID, _ count: Int, in state: inout PoolState) -> (SessionSalt, UInt64) {
        if state.dataCounters[volume, default: 0] + UInt64(count) > maxSealsPerSessionKey { startSession(in: &state) }
        let first = state.dataCounters[volume, default: 0]
        state.dataCounters[volume] = first + UInt64(count)
        return (state.session, first)
    }

    /// Begins a new session: a fresh random salt, so every key derived from
    /// it is new and its counters start at zero.
    func startSession(in state: inout PoolState) {
        state.session = .generate()
        state.metadataCounter = 0
        state.dataCounters = [:]
    }

    /// Seals a metadata block for placement at `block`.
    func sealMetadata(
        _ plaintext: [UInt8], kind: MetadataKind, object: UInt32, level: Int, firstIndex: UInt64, at block: PhysicalBlock,
        generation: UInt64
    ) throws(PoolError) -> (ciphertext: [UInt8], pointer: BlockPointer) {
        let (salt, counter, sealer) = state.withLock { state in
            let (salt, counter) = reserveMetadataCounters(1, in: &state)
            return (salt, counter, metadataSealer(salt, in: &state))
        }
        let nonce = NonceCounter(rawValue: counter)
        let ad = AssociatedData.metadata(
            pool: poolID, kind: kind, object: object, level: UInt16(level), firstIndex: firstIndex, salt: salt, counter: nonce)
        let sealed = sealer.seal(plaintext, counter: nonce, associatedData: ad)
        return (sealed.ciphertext, BlockPointer(block: block, salt: salt, counter: nonce, generation: generation, tag: sealed.tag))
    }

    /// Reads and opens a metadata block, reporting exactly what failed.
    func openMetadata(
        _ pointer: BlockPointer, kind: MetadataKind, object: UInt32, level: Int, firstIndex: UInt64, volume: String? = nil
    ) throws(PoolError) -> [UInt8] {
        try checkPlacement(pointer, what: "\(kind) pointer")
        let ciphertext = try readBlocks(pointer.block, count: 1)
        let sealer = state.withLock { metadataSealer(pointer.salt, in: &$0) }
        let ad = AssociatedData.metadata(
            pool: poolID, kind: kind, object: object, level: UInt16(level), firstIndex: firstIndex, salt: pointer.salt,
            counter: pointer.counter)
        do {
            return try sealer.open(ciphertext, tag: pointer.tag, counter: pointer.counter, associatedData: ad)
        } catch {
            throw .integrity(
                IntegrityFailure(
                    volume: volume, structure: kind.description, index: firstIndex, level: level, physicalBlock: pointer.block,
                    expectedTag: hex(pointer.tag), foundDigest: hex(SHA256.hash(data: ciphertext))))
        }
    }
}
