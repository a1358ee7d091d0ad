import BlockDevice
import Crypto
import Keys
import PoolFormat
import Threads

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
        try readPieces(pieces.map { (offset: $0.first * UInt64(Self.blockSize), buffer: $0.buffer) })
    }

    /// `readScattered` of pieces at byte offsets (whole blocks).
    func readPieces(_ pieces: [ReadPiece]) throws(PoolError) {
        for piece in pieces { precondition(piece.offset % UInt64(Self.blockSize) == 0 && piece.buffer.count % Self.blockSize == 0) }
        do {
            if pieces.count == 1 {
                try storage.read(at: pieces[0].offset, into: pieces[0].buffer)
            } else if let batch = asynchronousStorage {
                try batch.read(pieces)
            } else {
                for piece in pieces { try storage.read(at: piece.offset, into: piece.buffer) }
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

    func writeBlocks(_ first: PhysicalBlock, _ bytes: [UInt8], fua: Bool = false) throws(PoolError) {
        precondition(bytes.count % Self.blockSize == 0)
        var failure: BlockDeviceError?
        bytes.withUnsafeBytes { buffer in
            do throws(BlockDeviceError) {
                try storage.write(at: first * UInt64(Self.blockSize), from: buffer, fua: fua)
            } catch { failure = error }
        }
        if let failure { throw .storage(failure) }
    }

    /// Writes sealed blocks: copied in order into one buffer, one request
    /// per run of consecutive blocks, every run in one storage batch
    /// (`writePieces`). A checkpoint after random writes allocates its
    /// nodes in the holes the writes left, so a batch of 1,024 blocks can
    /// be as many runs; sent one round trip each, they were most of the
    /// checkpoint, which every request waits for. The buffer holds one
    /// batch (at most `CheckpointWrites.batchBlocks` blocks for a
    /// checkpoint, a commit's log blocks for a commit) and is kept for the
    /// next: a fresh 4 MiB mapping, populated under the crypt domain's
    /// mlockall, cost more than the round trips saved.
    ///
    /// With `durably`, the blocks and every write answered before the call
    /// are durable when it returns (`writePieces`).
    func writeScattered(_ blocks: [(PhysicalBlock, [UInt8])], durably: Bool = false) throws(PoolError) {
        guard !blocks.isEmpty else {
            if durably { try flushStorage() }
            return
        }
        let sorted = blocks.sorted { $0.0 < $1.0 }
        let buffer = Self.scatteredWriteBuffers.take(sorted.count * Self.blockSize)
        defer { Self.scatteredWriteBuffers.give(buffer) }
        for (index, block) in sorted.enumerated() {
            precondition(block.1.count == Self.blockSize, "a scattered write of a partial block")
            UnsafeMutableRawBufferPointer(rebasing: buffer[(index * Self.blockSize)..<((index + 1) * Self.blockSize)]).copyBytes(from: block.1)
        }
        let pieces = contiguousRuns(sorted.map(\.0)).map { run -> WritePiece in
            let bytes = buffer[(run.start * Self.blockSize)..<((run.start + run.count) * Self.blockSize)]
            return (sorted[run.start].0 * UInt64(Self.blockSize), UnsafeRawBufferPointer(rebasing: bytes))
        }
        try writePieces(pieces, durably: durably)
    }

    /// Sealed metadata only (ciphertext): buffers go back without zeroing.
    /// One batch's worth is kept, for the commits and checkpoints to come.
    private static let scatteredWriteBuffers = BufferCache(retainedBytes: 8 << 20, alignment: 64, smallest: PoolLayout.blockSize)

    /// Writes whole blocks from each piece's buffer, every piece in one
    /// storage batch where the device can send one (a remote device: one
    /// round trip), one by one otherwise. With `durably`, the pieces and
    /// every write answered before the call are durable when it returns: a
    /// remote device with FUA still takes one round trip
    /// (`AsynchronousBlockDevice.writeDurably`), others a flush after.
    func writePieces(_ pieces: [WritePiece], durably: Bool = false) throws(PoolError) {
        for piece in pieces { precondition(piece.offset % UInt64(Self.blockSize) == 0 && piece.buffer.count % Self.blockSize == 0) }
        do {
            if let batch = asynchronousStorage {
                try durably ? batch.writeDurably(pieces) : batch.write(pieces)
            } else {
                for piece in pieces { try storage.write(at: piece.offset, from: piece.buffer, fua: false) }
                if durably { try storage.flush() }
            }
        } catch { throw .storage(error) }
    }

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
        let count = UInt64(count)
        // One access to the volume's counter, so one hash of its key per
        // write, where reading and writing it apart took three.
        func take(_ counter: inout UInt64) -> UInt64? {
            guard counter + count <= maxSealsPerSessionKey else { return nil }
            defer { counter += count }
            return counter
        }
        if let first = take(&state.dataCounters[volume, default: 0]) { return (state.session, first) }
        startSession(in: &state)
        state.dataCounters[volume] = count
        return (state.session, 0)
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
            return (salt, NonceCounter(rawValue: counter), metadataSealer(salt, in: &state))
        }
        return sealMetadata(
            plaintext, kind: kind, object: object, level: level, firstIndex: firstIndex, at: block, generation: generation,
            counter: (salt, counter, sealer))
    }

    /// Seals a metadata block for placement at `block` under a counter
    /// already reserved (`NodeReserve`).
    func sealMetadata(
        _ plaintext: [UInt8], kind: MetadataKind, object: UInt32, level: Int, firstIndex: UInt64, at block: PhysicalBlock,
        generation: UInt64, counter reserved: (SessionSalt, NonceCounter, BlockSealer)
    ) -> (ciphertext: [UInt8], pointer: BlockPointer) {
        let (salt, nonce, sealer) = reserved
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
        return try openMetadata(sealed: ciphertext[...], pointer, kind: kind, object: object, level: level, firstIndex: firstIndex, volume: volume)
    }

    /// Opens the metadata block `pointer` names from its ciphertext,
    /// already read (`sealed`, one block); the integrity failure names it
    /// as `openMetadata(_:kind:object:level:firstIndex:volume:)` does.
    func openMetadata(
        sealed ciphertext: ArraySlice<UInt8>, _ pointer: BlockPointer, kind: MetadataKind, object: UInt32, level: Int, firstIndex: UInt64,
        volume: String? = nil
    ) throws(PoolError) -> [UInt8] {
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
