import Crypto
import Keys
import PoolFormat

/// What `bulkhead dump` shows: structure, never key material.
public struct PoolSummary: Sendable {
    public struct Keyslot: Sendable {
        public var slot: UInt32
        public var type: KeyslotType
        public var cost: ScryptCost?
        /// A `tpm2` slot's sealed object (only the TPM that sealed it can
        /// load it), for showing its PCRs and PIN flag.
        public var sealedObject: [UInt8]?
    }

    public var poolID: String
    public var generation: UInt64
    public var blockCount: UInt64
    public var freeBlocks: UInt64
    public var logRecords: UInt64
    public var keyslots: [Keyslot]
    public var volumes: [VolumeInfo]
}

/// What `bulkhead verify` found.
public struct VerifyReport: Sendable {
    public var volumesChecked = 0
    public var dataBlocksChecked: UInt64 = 0
    public var failures: [PoolError] = []
}

extension Pool {
    public func summary() -> PoolSummary {
        let slots = header.withLock { $0.slots }
        return state.withLock { state in
            PoolSummary(
                poolID: hex(poolID), generation: state.generation, blockCount: blockCount, freeBlocks: state.space.freeCount,
                logRecords: state.logRecordCount + UInt64(state.pending.count),
                keyslots: slots.map {
                    PoolSummary.Keyslot(
                        slot: $0.slot, type: $0.type,
                        cost: $0.type == .passphrase ? ScryptCost(log2N: $0.kdfLog2N, r: $0.kdfR, p: $0.kdfP) : nil,
                        sealedObject: $0.type == .tpm2 ? $0.extra : nil)
                }.sorted { $0.slot < $1.slot },
                volumes: state.volumes.values.map { VolumeInfo(id: $0.id, name: $0.name, size: $0.size) })
        }
    }

    /// Seals the master key into the first free keyslot (bulkhead keyslot add).
    @discardableResult
    public func addKeyslot(_ secret: KeyslotSecret, cost: ScryptCost = .tune()) throws(PoolError) -> UInt32 {
        try addKeyslot { slot in try KeyslotSealer.seal(master, into: slot, secret: secret, cost: cost, poolID: poolID) }
    }

    /// Adds a `tpm2` keyslot (bulkhead keyslot add --tpm2): `sealObject`
    /// gets the master key, seals it in the TPM and returns the serialized
    /// sealed object (`TPMContext.keyslotSealer`). Several may coexist.
    @discardableResult
    public func addTPM2Keyslot(sealObject: (SecretBytes) throws -> [UInt8]) throws(PoolError) -> UInt32 {
        try addKeyslot { slot in try KeyslotSealer.sealTPM2(master, into: slot, poolID: poolID, sealObject: sealObject) }
    }

    private func addKeyslot(_ make: (UInt32) throws -> KeyslotBlock) throws(PoolError) -> UInt32 {
        try header.withLock { (image) throws(PoolError) -> UInt32 in
            let used = Set(image.slots.map(\.slot))
            guard let free = (0..<UInt32(PoolLayout.keyslotCount)).first(where: { !used.contains($0) }) else {
                throw .keyslot("all \(PoolLayout.keyslotCount) keyslots are in use")
            }
            let block: KeyslotBlock
            do { block = try make(free) } catch {
                throw .keyslot("cannot seal the master key: \(error)")
            }
            let slots = image.slots + [block]
            try writeHeaderAreas(slots: slots, updateCounter: image.updateCounter + 1)
            image.slots = slots
            image.updateCounter += 1
            return free
        }
    }

    /// Wipes a keyslot (bulkhead keyslot remove). The last keyslot stays.
    public func removeKeyslot(_ slot: UInt32) throws(PoolError) {
        try header.withLock { (image) throws(PoolError) in
            guard image.slots.contains(where: { $0.slot == slot }) else { throw .keyslot("keyslot \(slot) is empty") }
            guard image.slots.count > 1 else { throw .keyslot("keyslot \(slot) is the last one; removing it would lose the pool") }
            let slots = image.slots.filter { $0.slot != slot }
            try writeHeaderAreas(slots: slots, updateCounter: image.updateCounter + 1)
            image.slots = slots
            image.updateCounter += 1
        }
    }

    /// Reads and authenticates every tree node and data block of every
    /// volume (bulkhead verify). `progress` gets volumes done and total.
    public func verify(progress: (Int, Int, String) -> Void = { _, _, _ in }) -> VerifyReport {
        var report = VerifyReport()
        let all = volumes
        for (index, info) in all.enumerated() {
            progress(index, all.count, info.name)
            do {
                let volume = try self.volume(named: info.name)
                var buffer = [UInt8](repeating: 0, count: 1 << 20)
                var offset: UInt64 = 0
                while offset < info.size {
                    let length = Int(min(UInt64(buffer.count), info.size - offset))
                    var failure: PoolError?
                    buffer.withUnsafeMutableBytes { raw in
                        do throws(PoolError) {
                            try volume.readChecked(at: offset, into: UnsafeMutableRawBufferPointer(rebasing: raw[0..<length]))
                        } catch { failure = error }
                    }
                    if let failure {
                        // Find every damaged block of the chunk, not just the first.
                        let found = volume.scanBlocks(offset..<(offset + UInt64(length)))
                        report.failures += found.isEmpty ? [failure] : found
                    }
                    report.dataBlocksChecked += UInt64(length / PoolLayout.blockSize)
                    offset += UInt64(length)
                }
                report.volumesChecked += 1
            } catch {
                report.failures.append(error)
            }
        }
        progress(all.count, all.count, "")
        return report
    }
}
