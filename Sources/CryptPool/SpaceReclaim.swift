import PoolFormat

/// Running out of space while copy-on-write still holds reclaimable blocks
/// (docs/format.md, section 7, "Allocation failure").
extension Pool {
    /// Allocates `count` blocks for data, near `hint` where it can
    /// (`SpaceMap.allocate(_:near:)`), leaving free what the next commit
    /// and checkpoint need to write, so that the blocks overwritten since
    /// the last commit can always be reclaimed: `.noSpace` if that does
    /// not fit. `.checkpointBehind` while a checkpoint runs beside writes
    /// and the records written since it began have reached the bound:
    /// they wait for the commit its end allows, and so does this write
    /// (`reclaimingSpace`), so the records and overlays held stay within
    /// about twice the bound however fast writes come.
    func allocateData(_ count: Int, near hint: PhysicalBlock?, in state: inout PoolState) throws(PoolError) -> [PhysicalBlock] {
        // Without a FLUSH only the timer commits; at full write speed the
        // records, the overlay and the next commit's and checkpoint's
        // buffers would grow with the data written over a whole interval.
        if state.pending.count >= configuration.hurriedCommitRecords { commitTimer?.commitSoon() }
        if state.checkpointFolding, state.pending.count >= configuration.checkpointRecords { throw .checkpointBehind }
        let reserve = metadataReserve(afterRecords: count, in: state)
        let (needed, overflow) = UInt64(count).addingReportingOverflow(reserve)
        guard !overflow, needed <= state.space.freeCount, let blocks = state.space.allocate(count, near: hint) else { throw .noSpace }
        return blocks
    }

    /// Blocks a commit of the pending records plus `extra` more, then a
    /// checkpoint of every overlay, allocate before they free anything:
    /// log blocks, rewritten tree nodes (at most one per changed entry or
    /// unmapped range edge, and never more than the level holds), the volume
    /// table and the pool object.
    func metadataReserve(afterRecords extra: Int, in state: PoolState) -> UInt64 {
        let records = UInt64(state.pending.count) + UInt64(extra)
        let perBlock = UInt64(PoolLayout.logRecordsPerBlock)
        var reserve = (records + perBlock - 1) / perBlock
        for volume in state.volumes.values {
            // A running checkpoint's allocations are still to come too.
            let changes = UInt64(volume.overlay.mapped.count) + UInt64(volume.folding.mapped.count) + UInt64(extra)
                + 2 * UInt64(volume.overlay.unmapped.count + volume.folding.unmapped.count)
            var units = volume.blockCount
            for _ in 0..<volume.depth {
                units = (units + UInt64(PoolLayout.fanOut) - 1) / UInt64(PoolLayout.fanOut)
                reserve += min(changes, units)
            }
        }
        let tableBlocks = (state.volumes.count + PoolLayout.volumesPerTableBlock - 1) / PoolLayout.volumesPerTableBlock
        return reserve + UInt64(tableBlocks) + 1
    }

    /// Runs `body` (a write); when it runs out of space, commits (and, if
    /// that frees nothing more, checkpoints) to release the blocks held by
    /// copy-on-write, and runs it again. `.noSpace` only once neither helps.
    /// Callers hold no gate or range lock: the commit needs them.
    func reclaimingSpace(_ body: () throws(PoolError) -> Void) throws(PoolError) {
        var attempts = 0
        while true {
            do throws(PoolError) {
                return try body()
            } catch .noSpace {
                attempts += 1
                guard attempts <= Self.reclaimAttempts, try reclaimSpace() else { throw .noSpace }
            } catch .checkpointBehind {
                // Not out of space: wait for the running checkpoint (commits
                // are serialised with it), then try again; each end of a
                // checkpoint lets writes on until the bound.
                _ = commits.wait(until: { !$0.running }) { _ in () }
            }
        }
    }

    /// Reclaims after a commit and after a checkpoint, plus one for writers
    /// that took the space the first reclaim freed.
    static let reclaimAttempts = 3

    /// Commits if anything is uncommitted, otherwise checkpoints if the log
    /// or an overlay holds anything; returns whether it did either.
    func reclaimSpace() throws(PoolError) -> Bool {
        try serialisedCommit { () throws(PoolError) -> Bool in
            let (uncommitted, folded) = state.withLock { state in
                (!state.pending.isEmpty || !state.releaseAfterCommit.isEmpty,
                 !state.logBlocks.isEmpty || state.volumes.values.contains { $0.hasChanges })
            }
            if uncommitted {
                try gate.withShared { () throws(PoolError) in try commit() }
                return true
            }
            guard folded else { return false }
            try gate.withExclusive { () throws(PoolError) in try checkpoint() }
            return true
        }
    }
}
