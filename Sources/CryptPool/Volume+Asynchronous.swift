import BlockDevice
import PoolFormat
import Threads

/// The fast path of whole-block READs and WRITEs: started on the NBD
/// server's connection thread and finished by the storage device's
/// completion (the storage connection's reader thread), so no thread waits
/// for storage. It runs only when nothing would block: the gate and the
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
        guard let release = lock(blocks) else { return false }
        let found: LocatedRead?
        do throws(PoolError) { found = try locate(blocks, in: buffer, cachedOnly: true) } catch { found = nil }
        guard let located = found else {
            // Failures, such as a misplaced pointer, are reported by the synchronous path.
            release()
            return false
        }
        guard !located.runs.isEmpty else {
            release()
            completion(.done)
            return true
        }
        let countdown = Countdown(located.runs.count)
        for (index, run) in located.runs.enumerated() {
            let region = located.region(of: run)
            let started = storage.startRead(at: located.physicalStart(of: run) * Self.blockSize, into: region) { outcome in
                guard let allDone = countdown.finish(outcome) else { return }
                // The ciphertext is in the buffer: another write may now map
                // these blocks elsewhere without changing what is opened.
                release()
                guard allDone else { return completion(.redoSynchronously) }
                do throws(PoolError) {
                    try self.open(located)
                    completion(.done)
                } catch {
                    completion(.failed(self.deviceError(error)))
                }
            }
            if !started {
                if index == 0 {
                    release()
                    return false
                }
                if let allDone = countdown.finish(.redoSynchronously) {
                    release()
                    precondition(!allDone)
                    completion(.redoSynchronously)
                }
            }
        }
        return true
    }

    public func startWrite(
        at offset: UInt64, from buffer: UnsafeRawBufferPointer, fua: Bool,
        completion: @escaping @Sendable (AsynchronousOutcome) -> Void
    ) -> Bool {
        guard let storage = pool.asynchronousStorage, !fua, isWholeBlocks(offset, buffer.count), !pool.hasFailed else {
            return false
        }
        let blocks = Self.blockRange(offset, UInt64(buffer.count))
        guard let release = lock(blocks) else { return false }
        let prepared: SealedWrite?
        do throws(PoolError) { prepared = try seal(blocks, from: buffer) } catch { prepared = nil }
        guard let sealed = prepared else {
            // Out of space (a commit must free some) or the volume is gone.
            release()
            return false
        }
        // One run (almost every write) needs no countdown.
        let countdown = sealed.runs.count > 1 ? Countdown(sealed.runs.count) : nil
        let finish: @Sendable (Bool) -> Void = { allDone in
            guard allDone else {
                self.abandon(sealed)
                release()
                return completion(.redoSynchronously)
            }
            do throws(PoolError) {
                try self.map(sealed)
                release()
                completion(.done)
            } catch {
                release()
                completion(.failed(self.deviceError(error)))
            }
        }
        for (index, run) in sealed.runs.enumerated() {
            let started = storage.startWrite(at: sealed.physicalStart(of: run) * Self.blockSize, from: sealed.bytes(of: run), fua: false) {
                outcome in
                guard let countdown else {
                    if case .done = outcome { return finish(true) }
                    return finish(false)
                }
                if let allDone = countdown.finish(outcome) { finish(allDone) }
            }
            if !started {
                if index == 0 {
                    abandon(sealed)
                    release()
                    return false
                }
                if let allDone = countdown?.finish(.redoSynchronously) { finish(allDone) }
            }
        }
        return true
    }

    private func isWholeBlocks(_ offset: UInt64, _ count: Int) -> Bool {
        guard count > 0, offset % Self.blockSize == 0, UInt64(count) % Self.blockSize == 0 else { return false }
        let (end, overflow) = offset.addingReportingOverflow(UInt64(count))
        return !overflow && end <= size
    }

    /// Takes the gate shared and the blocks' range lock if neither needs
    /// waiting; returns what gives them back.
    private func lock(_ blocks: Range<UInt64>) -> (@Sendable () -> Void)? {
        let pool = self.pool
        guard pool.gate.tryAcquireShared() else { return nil }
        guard let ticket = pool.ranges.tryLock(key: id.rawValue, range: blocks) else {
            pool.gate.releaseShared()
            return nil
        }
        return {
            pool.ranges.unlock(ticket)
            pool.gate.releaseShared()
        }
    }
}

/// Counts down the storage requests of one volume request.
private final class Countdown: Sendable {
    private struct State {
        var remaining: Int
        var failed = false
    }

    private let state: Guarded<State>

    init(_ count: Int) { state = Guarded(State(remaining: count)) }

    /// Notes one request's outcome. For the last one, returns whether all
    /// succeeded; nil before. Any failure, even a final storage error, is
    /// redone synchronously, which retries across reconnects and reports
    /// the error the synchronous way.
    func finish(_ outcome: AsynchronousOutcome) -> Bool? {
        state.withLock { state -> Bool? in
            if case .done = outcome {} else { state.failed = true }
            state.remaining -= 1
            return state.remaining == 0 ? !state.failed : nil
        }
    }
}
