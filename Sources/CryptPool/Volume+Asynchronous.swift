import BlockDevice
import PoolFormat
import Threads

/// The fast path of whole-block READs and WRITEs: started on the NBD
/// server's connection thread and finished by the storage device's
/// completion (the storage connection's reader thread; for a large READ, a
/// `HandOff` thread it passes the work to), so no thread waits for
/// storage. It runs only when nothing would block: the gate and the
/// blocks' range lock are free, every pointer is in memory (the overlay or
/// cached tree nodes), and free space is at hand. Anything else (partial
/// blocks, FUA, a node to read, a commit needed to free space, a storage
/// connection to re-establish) returns false or asks to be redone on the
/// synchronous path, which handles it.
extension Volume: AsynchronousBlockDevice {
    public func startRead(
        at offset: UInt64, into buffer: UnsafeMutableRawBufferPointer,
        completion: @escaping @Sendable (AsynchronousOutcome) -> Void
    ) -> Bool {
        guard let storage = pool.asynchronousStorage, isWholeBlocks(offset, buffer.count), !pool.hasFailed else { return false }
        let blocks = Self.blockRange(offset, UInt64(buffer.count))
        guard let ticket = lock(blocks) else { return false }
        let found: LocatedRead?
        do throws(PoolError) { found = try locate(blocks, in: buffer, cachedOnly: true) } catch { found = nil }
        guard let located = found else {
            // Failures, such as a misplaced pointer, are reported by the synchronous path.
            release(ticket)
            return false
        }
        guard !located.requests.isEmpty else {
            release(ticket)
            completion(.done)
            return true
        }
        // One storage batch for every run: a fragmented read costs one
        // registration and one round trip, not one per run.
        let started = storage.startReads(located.requests) { outcome in
            // The ciphertext is in the buffer: another write may now map
            // these blocks elsewhere without changing what is opened.
            self.release(ticket)
            // Any failure, even a final storage error or a block that does
            // not authenticate, is redone synchronously, which retries
            // across reconnects and reports the error the synchronous way
            // (an integrity failure with the digest of what storage sent,
            // which this path does not keep).
            guard case .done = outcome else { return completion(.redoSynchronously) }
            // This runs on the storage reader thread, which every volume's
            // replies wait behind: a large read is opened and answered
            // elsewhere while it reads on.
            if located.blocks.count >= Self.handOffBlocks {
                HandOff.shared.run { self.finish(located, completion) }
            } else {
                self.finish(located, completion)
            }
        }
        if !started { release(ticket) }
        return started
    }

    public func startWrite(
        at offset: UInt64, from buffer: UnsafeRawBufferPointer, fua: Bool,
        completion: @escaping @Sendable (AsynchronousOutcome) -> Void
    ) -> Bool {
        guard let storage = pool.asynchronousStorage, !fua, isWholeBlocks(offset, buffer.count), !pool.hasFailed else {
            return false
        }
        let blocks = Self.blockRange(offset, UInt64(buffer.count))
        guard let ticket = lock(blocks) else { return false }
        let prepared: SealedWrite?
        do throws(PoolError) { prepared = try seal(blocks, from: buffer) } catch { prepared = nil }
        guard let sealed = prepared else {
            // Out of space (a commit must free some) or the volume is gone.
            release(ticket)
            return false
        }
        let written: @Sendable (AsynchronousOutcome) -> Void = { outcome in
            guard case .done = outcome else {
                self.abandon(sealed)
                self.release(ticket)
                return completion(.redoSynchronously)
            }
            do throws(PoolError) {
                try self.map(sealed)
                self.release(ticket)
                completion(.done)
            } catch {
                self.release(ticket)
                completion(.failed(self.deviceError(error)))
            }
        }
        // Large sealed runs go to the storage socket by reference, not by
        // copy, where their buffer allows (`SealedWrite.isLendable`).
        let started =
            sealed.isLendable
            ? storage.startLentWrites(sealed.pieces, fua: false, completion: written)
            : storage.startWrites(sealed.pieces, fua: false, completion: written)
        if !started {
            abandon(sealed)
            release(ticket)
        }
        return started
    }

    /// Opens a started READ's blocks in place and answers it.
    private func finish(_ located: LocatedRead, _ completion: @Sendable (AsynchronousOutcome) -> Void) {
        do throws(PoolError) {
            try open(located, keepingCiphertext: false)
            completion(.done)
        } catch {
            completion(.redoSynchronously)
        }
    }

    /// Blocks from which a READ's completion leaves the storage reader
    /// thread (`HandOff`): 256 KiB. Opening and sending 1 MiB took that
    /// thread about as long as receiving it, and the next reply waited for
    /// both; a 4 KiB read's completion costs less than the hand-off.
    static let handOffBlocks = 64

    private func isWholeBlocks(_ offset: UInt64, _ count: Int) -> Bool {
        guard count > 0, offset % Self.blockSize == 0, UInt64(count) % Self.blockSize == 0 else { return false }
        let (end, overflow) = offset.addingReportingOverflow(UInt64(count))
        return !overflow && end <= size
    }

    /// Takes the gate shared and the blocks' range lock if neither needs
    /// waiting; `release` gives them back.
    private func lock(_ blocks: Range<UInt64>) -> RangeLocks.Ticket? {
        guard pool.gate.tryAcquireShared() else { return nil }
        guard let ticket = pool.ranges.tryLock(key: id.rawValue, range: blocks) else {
            pool.gate.releaseShared()
            return nil
        }
        return ticket
    }

    private func release(_ ticket: RangeLocks.Ticket) {
        pool.ranges.unlock(ticket)
        pool.gate.releaseShared()
    }
}
