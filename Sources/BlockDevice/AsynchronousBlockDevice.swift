import Synchronization

/// How an operation started with `AsynchronousBlockDevice` ended.
public enum AsynchronousOutcome: Sendable {
    /// Done: the data is in place (READ) or written (WRITE).
    case done
    /// Failed for good; the error is the one the synchronous call would throw.
    case failed(BlockDeviceError)
    /// Not done, and nothing of it is to be kept: the caller performs it again
    /// with the synchronous method, from a thread that may block (the
    /// storage connection failed and needs the synchronous path's
    /// reconnect-and-retry, or a lock turned out to be taken).
    case redoSynchronously
}

/// One piece of a batched READ: `buffer.count` bytes at `offset`.
public typealias ReadPiece = (offset: UInt64, buffer: UnsafeMutableRawBufferPointer)
/// One piece of a batched WRITE: `buffer` at `offset`.
public typealias WritePiece = (offset: UInt64, buffer: UnsafeRawBufferPointer)

/// A block device that can also start READs and WRITEs without blocking the
/// calling thread, so an NBD server's connection thread can keep reading
/// requests while earlier ones are in flight (the crypt volume over a remote
/// storage device), or finish them on the spot without handing them to
/// another thread (a file in the page cache).
///
/// Each `start` method either returns false, having done nothing (the
/// caller then uses the synchronous method), or returns true and calls
/// `completion` exactly once, on any thread, possibly before returning. The
/// buffer must stay valid and untouched until then. Completions must not
/// block: they may run on a thread that other requests' replies depend on.
///
/// The batch forms (`startReads`, `startWrites`, `read(_:)`) carry the
/// pieces of one request scattered over the device (a fragmented volume's
/// runs): a remote device sends them together, paying one round trip and
/// one registration; the default implementations take them one by one.
public protocol AsynchronousBlockDevice: BlockDevice {
    /// Starts NBD_CMD_READ of `buffer.count` bytes at `offset`.
    func startRead(
        at offset: UInt64, into buffer: UnsafeMutableRawBufferPointer,
        completion: @escaping @Sendable (AsynchronousOutcome) -> Void
    ) -> Bool

    /// Starts NBD_CMD_WRITE of `buffer` at `offset`, durably with `fua`.
    func startWrite(
        at offset: UInt64, from buffer: UnsafeRawBufferPointer, fua: Bool,
        completion: @escaping @Sendable (AsynchronousOutcome) -> Void
    ) -> Bool

    /// Starts NBD_CMD_READ of every piece, with one completion for all:
    /// `.done` once every piece is in place, otherwise `.redoSynchronously`
    /// if any piece asks for it, else the first piece's failure. An empty
    /// batch completes `.done` at once.
    func startReads(_ pieces: [ReadPiece], completion: @escaping @Sendable (AsynchronousOutcome) -> Void) -> Bool

    /// Starts NBD_CMD_WRITE of every piece, durably with `fua`, with one
    /// completion for all, merged as `startReads` does.
    func startWrites(_ pieces: [WritePiece], fua: Bool, completion: @escaping @Sendable (AsynchronousOutcome) -> Void) -> Bool

    /// Starts NBD_CMD_WRITE of every piece as `startWrites` does, from
    /// memory lent to the device until `completion`: it may send large
    /// pieces by reference, so that the kernel holds the pages rather than
    /// a copy until the peer reads them, which a peer that answers first
    /// may do later. Only for buffers that hold nothing but bytes meant for
    /// this device from allocation to release, and whose pages are never
    /// reused for other data (`SealedWrite`'s). The default copies.
    func startLentWrites(_ pieces: [WritePiece], fua: Bool, completion: @escaping @Sendable (AsynchronousOutcome) -> Void) -> Bool

    /// NBD_CMD_READ of every piece, blocking until all are in place; throws
    /// the first failure, in piece order, once every piece has ended.
    func read(_ pieces: [ReadPiece]) throws(BlockDeviceError)

    /// NBD_CMD_WRITE (without FUA) of every piece, blocking until all have
    /// ended; throws the first failure, in piece order, once every piece
    /// has ended.
    func write(_ pieces: [WritePiece]) throws(BlockDeviceError)

    /// Makes durable every piece and every write answered before this call:
    /// a commit's log and the data it names. A remote device with
    /// NBD_FLAG_SEND_FUA sends each piece with FUA and NBD_CMD_FLUSH beside
    /// them, one round trip; the default writes, then flushes.
    func writeDurably(_ pieces: [WritePiece]) throws(BlockDeviceError)

    /// Whether NBD_CMD_FLUSH (and a FUA write) finishes at once, with
    /// nothing to wait for (a file on a memory file system), so that a
    /// server may run it on its connection thread.
    var flushesAtOnce: Bool { get }
}

extension AsynchronousBlockDevice {
    public func startReads(_ pieces: [ReadPiece], completion: @escaping @Sendable (AsynchronousOutcome) -> Void) -> Bool {
        startEach(pieces.count, completion) { index, done in
            startRead(at: pieces[index].offset, into: pieces[index].buffer, completion: done)
        }
    }

    public func startWrites(_ pieces: [WritePiece], fua: Bool, completion: @escaping @Sendable (AsynchronousOutcome) -> Void) -> Bool {
        startEach(pieces.count, completion) { index, done in
            startWrite(at: pieces[index].offset, from: pieces[index].buffer, fua: fua, completion: done)
        }
    }

    public func startLentWrites(_ pieces: [WritePiece], fua: Bool, completion: @escaping @Sendable (AsynchronousOutcome) -> Void) -> Bool {
        startWrites(pieces, fua: fua, completion: completion)
    }

    public func read(_ pieces: [ReadPiece]) throws(BlockDeviceError) {
        try forEachPiece(pieces.count) { (index) throws(BlockDeviceError) in try read(at: pieces[index].offset, into: pieces[index].buffer) }
    }

    public func write(_ pieces: [WritePiece]) throws(BlockDeviceError) {
        try forEachPiece(pieces.count) { (index) throws(BlockDeviceError) in
            try write(at: pieces[index].offset, from: pieces[index].buffer, fua: false)
        }
    }

    public func writeDurably(_ pieces: [WritePiece]) throws(BlockDeviceError) {
        try write(pieces)
        try flush()
    }

    public var flushesAtOnce: Bool { false }

    /// Runs `body` for every piece, one after another, all of them even
    /// after a failure; then throws the first failure.
    private func forEachPiece(_ count: Int, _ body: (Int) throws(BlockDeviceError) -> Void) throws(BlockDeviceError) {
        var failure: BlockDeviceError?
        for index in 0..<count {
            do { try body(index) } catch { if failure == nil { failure = error } }
        }
        if let failure { throw failure }
    }

    /// Starts `count` single requests with `start(index, done)`, merging
    /// their outcomes into one call of `completion`. If the first does not
    /// start, nothing did: false. If a later one does not start, the batch
    /// ends `.redoSynchronously` once those started have completed.
    private func startEach(
        _ count: Int, _ completion: @escaping @Sendable (AsynchronousOutcome) -> Void,
        _ start: (Int, @escaping @Sendable (AsynchronousOutcome) -> Void) -> Bool
    ) -> Bool {
        guard count > 0 else {
            completion(.done)
            return true
        }
        let merge = OutcomeMerge(count, completion)
        for index in 0..<count {
            if start(index, { merge.finish($0) }) { continue }
            guard index > 0 else { return false }
            // The pieces not started count as one redo each.
            for _ in index..<count { merge.finish(.redoSynchronously) }
            break
        }
        return true
    }
}

/// Merges the outcomes of a batch's pieces and calls the batch's
/// completion when the last arrives.
private final class OutcomeMerge: Sendable {
    private struct State: Sendable {
        var remaining: Int
        var merged: AsynchronousOutcome = .done
    }

    private let state: Mutex<State>
    private let completion: @Sendable (AsynchronousOutcome) -> Void

    init(_ count: Int, _ completion: @escaping @Sendable (AsynchronousOutcome) -> Void) {
        state = Mutex(State(remaining: count))
        self.completion = completion
    }

    func finish(_ outcome: AsynchronousOutcome) {
        let last: AsynchronousOutcome? = state.withLock { state in
            switch (state.merged, outcome) {
            case (_, .done), (.redoSynchronously, _), (.failed, .failed): break
            default: state.merged = outcome
            }
            state.remaining -= 1
            return state.remaining == 0 ? state.merged : nil
        }
        if let last { completion(last) }
    }
}
