import Keys
import PoolFormat

extension Pool {
    /// Makes every write completed before this call durable and fresh
    /// (NBD_CMD_FLUSH): a commit, shared with concurrent callers (group
    /// commit), plus a checkpoint when the log has grown past its bound.
    public func flush() throws(PoolError) {
        let ticket = commits.update { tickets -> UInt64 in
            tickets.issued += 1
            return tickets.issued
        }
        // Wait until no commit runs; if one that started after our ticket
        // finished meanwhile, our writes are already durable.
        let mine = commits.wait(until: { !$0.running || $0.completed >= ticket }) { tickets -> UInt64? in
            if tickets.completed >= ticket { return nil }
            tickets.running = true
            return tickets.issued
        }
        guard let covering = mine ?? nil else { return }
        defer { commits.update { $0.running = false } }
        try commitThenBoundLog()
        commits.update { $0.completed = max($0.completed, covering) }
    }

    /// Commits everything written so far, as a FLUSH does, and, with
    /// `newSuperblock`, writes a superblock even if nothing was pending, so
    /// that the durable state carries the current anchor epoch. Used at
    /// clean close and to advance the epoch: neither checkpoints unless the
    /// log reached its bound, since a checkpoint cut short rewrites every
    /// tree node the log's records dirtied (docs/format.md, section 11).
    func commitEverything(newSuperblock: Bool) throws(PoolError) {
        try serialisedCommit { () throws(PoolError) in try commitThenBoundLog(newSuperblock: newSuperblock) }
    }

    /// A commit, then a checkpoint if the log has reached its bound; just
    /// the checkpoint if the records since the last commit would take the
    /// log there, since a checkpoint takes those records itself (its
    /// superblock names trees holding them and an empty log). Logging them
    /// first sealed and wrote a log block per 50 records, only for the
    /// checkpoint to drop the log a moment later: under sustained 4 KiB
    /// random writes that commit halved the crypt domain's throughput for
    /// 100-150 ms every 65,536 writes (`bench/CHAIN.md`, session 16).
    /// Callers serialise commits.
    private func commitThenBoundLog(newSuperblock: Bool = false) throws(PoolError) {
        let bound = UInt64(configuration.checkpointRecords)
        if state.withLock({ $0.logRecordCount + UInt64($0.pending.count) >= bound }) {
            try checkpoint(besideIO: true)
            return
        }
        try gate.withShared { () throws(PoolError) in try commit(newSuperblock: newSuperblock) }
        let needsCheckpoint = state.withLock { $0.logRecordCount >= bound }
        // Beside reads and writes: a checkpoint after a busy interval writes
        // thousands of tree nodes, tens of milliseconds every request would
        // otherwise wait.
        if needsCheckpoint { try checkpoint(besideIO: true) }
    }

    /// Appends the records since the last commit to the log and writes the
    /// next superblock (docs/format.md, section 7); with nothing pending it
    /// writes one only if `newSuperblock` (it then names the same
    /// checkpoint and log as the one before). Callers serialise commits.
    func commit(newSuperblock: Bool = false) throws(PoolError) {
        try checkUsable()
        let (records, releases, generation, previous, logSequence, recordsEpoch) = state.withLock { state in
            let taken = (
                state.pending, state.releaseAfterCommit, state.generation + 1, state.logHead, UInt64(state.logBlocks.count),
                state.pendingEpoch
            )
            state.pending = []
            state.releaseAfterCommit = []
            state.pendingEpoch = nil
            return taken
        }
        guard !records.isEmpty else {
            // Nothing changed since the last commit, but data blocks may still
            // sit in the storage side's cache: they belong to no commit yet,
            // so there is nothing to make durable.
            state.withLock { $0.releaseAfterCommit.insert(contentsOf: releases, at: 0) }
            // A superblock whose write failed is written again: until it is
            // durable, neither are the writes it commits.
            if let unsynced = state.withLock({ $0.unsyncedSuperblock }) { try writeSuperblock(unsynced) }
            if newSuperblock { try writeSuperblock(nextSuperblockOverSameState()) }
            return
        }
        let chunks = stride(from: 0, to: records.count, by: PoolLayout.logRecordsPerBlock).map {
            Array(records[$0..<min($0 + PoolLayout.logRecordsPerBlock, records.count)])
        }
        guard let locations = state.withLock({ $0.space.allocate(chunks.count) }) else {
            restore(records, releases, recordsEpoch)
            throw .noSpace
        }
        var writes: [(PhysicalBlock, [UInt8])] = []
        var head = previous
        do throws(PoolError) {
            for (index, chunk) in chunks.enumerated() {
                let block = LogBlock(sequence: logSequence + UInt64(index), previous: head, records: chunk)
                let sealed = try sealMetadata(
                    block.encoded(), kind: .log, object: 0, level: 0, firstIndex: block.sequence, at: locations[index],
                    generation: generation)
                writes.append((locations[index], sealed.ciphertext))
                head = sealed.pointer
            }
            let logEpoch = storageEpoch
            // The log and the flush of the records' data blocks (all answered
            // before they were recorded), together where storage has FUA.
            try writeScattered(writes, durably: true)
            // Both checked if the storage restarted since: no superblock may
            // name a lost block.
            try checkFlushed(UnflushedWrites(metadata: writes, records: records, oldestEpoch: min(recordsEpoch ?? logEpoch, logEpoch)))
        } catch {
            state.withLock { state in for block in locations { state.space.release(block) } }
            restore(records, releases, recordsEpoch)
            throw error
        }
        let superblock = state.withLock { state in
            Superblock(
                poolID: poolID, generation: generation, anchorEpoch: state.anchorEpoch, checkpointRoot: state.poolObject, logHead: head,
                logRecordCount: state.logRecordCount + UInt64(records.count),
                logBlockCount: UInt64(state.logBlocks.count + chunks.count))
        }
        // From here the new superblock may be durable whatever happens, so
        // the state moves forward even if the write reports an error.
        state.withLock { state in
            state.generation = generation
            state.logHead = head
            state.logBlocks += locations
            state.logRecordCount += UInt64(records.count)
        }
        try writeSuperblock(superblock)
        state.withLock { state in for block in releases { state.space.release(block) } }
    }

    /// Superblock `g+1` naming what superblock `g` names, with the current
    /// anchor epoch; the state's generation moves to it.
    private func nextSuperblockOverSameState() -> Superblock {
        state.withLock { state in
            state.generation += 1
            return Superblock(
                poolID: poolID, generation: state.generation, anchorEpoch: state.anchorEpoch, checkpointRoot: state.poolObject,
                logHead: state.logHead, logRecordCount: state.logRecordCount, logBlockCount: UInt64(state.logBlocks.count))
        }
    }

    private func restore(_ records: [LogRecord], _ releases: [PhysicalBlock], _ epoch: UInt64?) {
        state.withLock { state in
            state.pending.insert(contentsOf: records, at: 0)
            state.releaseAfterCommit.insert(contentsOf: releases, at: 0)
            state.notePendingWrites(since: epoch)
        }
    }

    /// Writes a superblock into its slot, makes it durable, and records its
    /// generation in the trust anchor.
    func writeSuperblock(_ superblock: Superblock) throws(PoolError) {
        state.withLock { $0.unsyncedSuperblock = superblock }
        let slot = PoolLayout.superblockSlots[Int(superblock.generation % UInt64(PoolLayout.superblockSlots.count))]
        let bytes = superblock.block(mac: keys.mac(superblock.authenticatedBytes()))
        let epoch = storageEpoch
        // With FUA (section 7, step 4): durable once answered, so no flush.
        try writeBlocks(slot, bytes, fua: true)
        // Read back if the storage session changed meanwhile: without native
        // FUA, the write and its flush may have met different instances. A
        // superblock lost stays unsynced, to be written again; the anchor
        // never moves past what storage holds.
        try checkFlushed(UnflushedWrites(metadata: [(slot, bytes)], oldestEpoch: epoch))
        try anchor?.record(pool: poolID, generation: superblock.generation)
        state.withLock { state in
            if state.unsyncedSuperblock?.generation == superblock.generation { state.unsyncedSuperblock = nil }
        }
    }
}
