import BlockDevice
import Crypto
import Keys
import PoolFormat

/// What `Pool.format` hands back once: the recovery key, for a person to
/// write down. Never stored, never logged.
public struct FormatResult: Sendable {
    public let pool: Pool
    public let recoveryKey: RecoveryKey
}

extension Pool {
    /// Creates a new pool on `storage` (bulkhead format): a random master
    /// key in a passphrase keyslot (slot 0) and a recovery keyslot (slot 1),
    /// an empty checkpoint, generation 1.
    public static func format(
        storage: any BlockDevice, passphrase: [UInt8], cost: ScryptCost = .tune(), anchor: (any TrustAnchor)?,
        configuration: PoolConfiguration = PoolConfiguration()
    ) throws(PoolError) -> FormatResult {
        let blockCount = storage.size / UInt64(PoolLayout.blockSize)
        let geometry = SpaceMapGeometry(blockCount: blockCount)
        guard blockCount >= PoolLayout.minimumBlocks, geometry.firstAllocatable + 32 <= blockCount else {
            throw .invalidArgument("the device holds \(storage.size) bytes; a pool needs at least \((geometry.firstAllocatable + 32) * 4096)")
        }
        guard !storage.isReadOnly else { throw .invalidArgument("the device is read-only") }
        var generator = SystemRandomNumberGenerator()
        let poolID = (0..<16).map { _ in UInt8.random(in: 0...255, using: &generator) }
        let master = MasterKey.generate()
        let recovery = RecoveryKey.generate()
        let slots: [KeyslotBlock]
        do {
            slots = [
                try KeyslotSealer.seal(master, into: 0, secret: .passphrase(passphrase), cost: cost, poolID: poolID),
                try KeyslotSealer.seal(master, into: 1, secret: .recovery(recovery), poolID: poolID),
            ]
        } catch {
            throw .keyslot("cannot seal the master key: \(error)")
        }
        let keys = PoolKeys(master: master, poolID: poolID)
        let state = PoolState(
            generation: 0, space: SpaceMap(blockCount: blockCount), session: .generate(), volumes: VolumeStates(),
            nextVolumeID: VolumeID(rawValue: 1), poolObject: .null, volumeTable: [], spaceMapRegion: 1,
            regions: [SpaceMapRegionImage(geometry: geometry), SpaceMapRegionImage(geometry: geometry)])
        let pool = Pool(
            storage: storage, master: master, keys: keys, anchor: anchor, blockCount: blockCount, configuration: configuration,
            state: state, header: HeaderImage(slots: slots, updateCounter: 1))
        try pool.writeHeaderAreas(slots: slots, updateCounter: 1)
        try pool.writeBlocks(PoolLayout.superblockSlots[0], [UInt8](repeating: 0, count: 4 * PoolLayout.blockSize))
        try pool.gate.withExclusive { () throws(PoolError) in try pool.checkpoint() }
        pool.startCommitTimer()
        return FormatResult(pool: pool, recoveryKey: recovery)
    }

    /// Writes both header areas: B first, then A, each made durable, so a
    /// crash leaves at least one whole area.
    func writeHeaderAreas(slots: [KeyslotBlock], updateCounter: UInt64) throws(PoolError) {
        var slotBlocks = [[UInt8]](repeating: [UInt8](repeating: 0, count: PoolLayout.blockSize), count: PoolLayout.keyslotCount)
        for slot in slots { slotBlocks[Int(slot.slot)] = slot.encoded() }
        let digests = slotBlocks.map { block in
            block.allSatisfy { $0 == 0 } ? [UInt8](repeating: 0, count: 32) : Array(SHA256.hash(data: block))
        }
        let header = PoolHeader(poolID: poolID, blockCount: blockCount, updateCounter: updateCounter, keyslotDigests: digests)
        let area = header.block(mac: keys.mac(header.authenticatedBytes())) + slotBlocks.flatMap { $0 }
        for start in [PoolLayout.headerAreaB, PoolLayout.headerAreaA] {
            let epoch = storageEpoch
            try writeBlocks(start, area)
            let blocks = (0..<(area.count / PoolLayout.blockSize)).map { index in
                (start + UInt64(index), Array(area[(index * PoolLayout.blockSize)..<((index + 1) * PoolLayout.blockSize)]))
            }
            try flushStorage(covering: UnflushedWrites(metadata: blocks, oldestEpoch: epoch))
        }
    }

    /// Opens a pool: unlocks a keyslot, picks the newest superblock that
    /// authenticates and is not older than the trust anchor, loads its
    /// checkpoint and replays its log, and starts a new session.
    public static func open(
        storage: any BlockDevice, secret: KeyslotSecret, anchor: (any TrustAnchor)?,
        configuration: PoolConfiguration = PoolConfiguration()
    ) throws(PoolError) -> Pool {
        let (master, keys, header, slots) = try unlock(storage: storage, secret: secret)
        guard header.blockCount * UInt64(PoolLayout.blockSize) <= storage.size else {
            throw .notAPool("the header says \(header.blockCount) blocks but the device holds \(storage.size / 4096) (truncated?)")
        }
        let geometry = SpaceMapGeometry(blockCount: header.blockCount)
        let placeholder = PoolState(
            generation: 0, space: SpaceMap(blockCount: header.blockCount), session: .generate(), volumes: VolumeStates(),
            nextVolumeID: VolumeID(rawValue: 1), poolObject: .null, volumeTable: [], spaceMapRegion: 0,
            regions: [SpaceMapRegionImage(geometry: geometry), SpaceMapRegionImage(geometry: geometry)])
        let pool = Pool(
            storage: storage, master: master, keys: keys, anchor: anchor, blockCount: header.blockCount,
            configuration: configuration, state: placeholder,
            header: HeaderImage(slots: slots, updateCounter: header.updateCounter))
        try pool.recover()
        try pool.settleAnchorEpoch()
        pool.startCommitTimer()
        return pool
    }

    /// Finds a keyslot that opens with `secret` in the newer header area
    /// whose HMAC then verifies, falling back to the other area.
    static func unlock(storage: any BlockDevice, secret: KeyslotSecret) throws(PoolError) -> (
        MasterKey, PoolKeys, PoolHeader, [KeyslotBlock]
    ) {
        guard storage.size >= UInt64(PoolLayout.headerAreaBlocks * 2 * PoolLayout.blockSize) else {
            throw .notAPool("the device is only \(storage.size) bytes")
        }
        var bytes = [UInt8](repeating: 0, count: 2 * PoolLayout.headerAreaBlocks * PoolLayout.blockSize)
        var failure: BlockDeviceError?
        bytes.withUnsafeMutableBytes { buffer in
            do throws(BlockDeviceError) { try storage.read(at: 0, into: buffer) } catch { failure = error }
        }
        if let failure { throw .storage(failure) }
        var areas: [(PoolHeader, [UInt8], [UInt8], [[UInt8]])] = []
        var reasons: [String] = []
        for area in 0..<2 {
            let base = area * PoolLayout.headerAreaBlocks * PoolLayout.blockSize
            let block = { (index: Int) in Array(bytes[(base + index * PoolLayout.blockSize)..<(base + (index + 1) * PoolLayout.blockSize)]) }
            do {
                let (header, authenticated, mac) = try PoolHeader.decode(block(0))
                areas.append((header, authenticated, mac, (1...PoolLayout.keyslotCount).map(block)))
            } catch {
                reasons.append("header area \(area == 0 ? "A" : "B"): \(error)")
            }
        }
        guard !areas.isEmpty else { throw .notAPool(reasons.joined(separator: "; ")) }
        areas.sort { $0.0.updateCounter > $1.0.updateCounter }
        var failed = Set<[UInt8]>()
        for (header, authenticated, mac, slotBlocks) in areas {
            for (index, slotBlock) in slotBlocks.enumerated() {
                let slot: KeyslotBlock
                do {
                    guard let decoded = try KeyslotBlock.decode(slotBlock) else { continue }
                    slot = decoded
                } catch {
                    reasons.append("keyslot \(index): \(error)")
                    continue
                }
                switch (slot.type, secret) {
                case (.passphrase, .passphrase), (.recovery, .recovery), (.tpm2, .tpm2): break
                default: continue
                }
                guard slot.slot == index, Array(SHA256.hash(data: slotBlock)) == header.keyslotDigests[index] else {
                    reasons.append("keyslot \(index): does not match the header's digest")
                    continue
                }
                // Both areas usually hold the same keyslot: a TPM keyslot that
                // did not open under this pool ID is not tried again (the TPM
                // counts wrong PINs towards its lockout).
                guard slot.type != .tpm2 || !failed.contains(slotBlock + header.poolID) else { continue }
                let master: MasterKey
                do { master = try KeyslotSealer.open(slot, secret: secret, poolID: header.poolID) } catch {
                    reasons.append(error.description)
                    failed.insert(slotBlock + header.poolID)
                    continue
                }
                let keys = PoolKeys(master: master, poolID: header.poolID)
                guard keys.verifyMAC(mac, for: authenticated) else {
                    reasons.append("header HMAC does not verify with the key of keyslot \(index)")
                    continue
                }
                let slots = slotBlocks.compactMap { try? KeyslotBlock.decode($0) }
                return (master, keys, header, slots)
            }
        }
        throw .unlockFailed(reasons)
    }
}
