import BlockDevice
import Logging
import Sockets
import Threads

/// The sending side of one connection: replies go out whole and in the
/// order `send` was called, and `send` never blocks. A reply is written on
/// the caller's thread as far as the socket takes it without waiting; what
/// does not fit is queued for a flusher thread, which writes it out
/// (blocking, up to the reply timeout), and replies sent meanwhile queue
/// behind it. The caller may be the storage connection's reader thread,
/// which every volume's replies depend on: a consumer that stops reading
/// must stall only itself. Inside a `SendBatch`, small replies are gathered
/// and leave in one system call when the batch ends. `sendSpliced` alone
/// blocks its caller.
final class ReplyChannel: Sendable, SendBatch.Sender {
    /// Bytes waiting for the flusher: a copy, or the caller's memory lent
    /// until `release` is called.
    private enum Chunk {
        case copied([UInt8])
        case lent(UnsafeRawBufferPointer, release: @Sendable () -> Void)
        /// A READ's data, sent from its file (`sendSpliced`).
        case file(FileRange)
    }

    private struct State {
        /// Small replies of the current send batch, not yet written.
        var gathered: [UInt8] = []
        var queue: [Chunk] = []
        var queuedBytes = 0
        /// A flusher thread owns the socket's sending side.
        var flushing = false
        /// A flusher thread that found the queue empty waits to be claimed
        /// for the next (`startFlushing`) rather than exiting at once.
        var flusherParked = false
        /// A send failed: the connection is ending, nothing more goes out.
        var failed = false
        var sent: UInt64 = 0
    }

    /// Replies up to this size are gathered in a send batch; larger ones
    /// are worth their own system call.
    static let gatherLimit = 16 * 1024
    /// Gathered replies are written once they reach this size, without
    /// waiting for the batch to end: one request chunk (256 KiB) can hold
    /// over 9,000 READs, whose replies would otherwise all sit in memory.
    static let gatherTarget = 256 * 1024

    private let socket: Socket
    private let logger: Logger
    private let stackSize: Int
    private let state = Guarded(State())

    init(socket: Socket, logger: Logger, stackSize: Int) {
        self.socket = socket
        self.logger = logger
        self.stackSize = stackSize
    }

    /// Replies sent or queued so far.
    var count: UInt64 { state.withLock { $0.sent } }

    /// Sends a small reply with the others of the calling thread's send
    /// batch, at its end: copied, so the caller may reuse `bytes` at once.
    /// False, and nothing sent, outside a batch or for a reply too large to
    /// gather; then `send` it.
    func gather(_ bytes: UnsafeRawBufferPointer) -> Bool {
        guard bytes.count <= Self.gatherLimit, SendBatch.enlist(self) else { return false }
        let full = state.withLock { state -> Bool in
            guard !state.failed else { return false }
            state.sent += 1
            state.gathered.append(contentsOf: bytes)
            return state.gathered.count >= Self.gatherTarget
        }
        // A chunk of thousands of small READs must not pile up its
        // replies in memory until the batch ends.
        if full { flushGathered() }
        return true
    }

    /// Sends one whole reply after every reply sent before it. With
    /// `release`, the bytes are lent rather than copied when they cannot all
    /// go out at once: the caller keeps them valid until `release` is
    /// called (at once if they went out or sending failed).
    func send(_ bytes: UnsafeRawBufferPointer, release: (@Sendable () -> Void)? = nil) {
        if gather(bytes) {
            release?()
            return
        }
        var failure: SocketError?
        let (startFlusher, lent) = state.withLock { state -> (Bool, Bool) in
            guard let gatheredStartFlusher = admit(in: &state, failure: &failure) else { return (false, false) }
            let (startFlusher, lent) = emit(bytes, release: release, in: &state, failure: &failure)
            return (startFlusher || gatheredStartFlusher, lent)
        }
        if !lent { release?() }
        if let failure { fail(failure) }
        if startFlusher { startFlushing() }
    }

    /// Sends a READ reply whose data goes from the page cache straight to
    /// the socket (sendfile(2)): `header`, copied, then `data`, after
    /// every reply sent before it. Unlike `send`, this blocks: the calling
    /// thread (a worker, never the one reading requests) sends the data
    /// itself, up to the socket's send timeout, and replies sent meanwhile
    /// queue behind it.
    func sendSpliced(header: UnsafeRawBufferPointer, data: FileRange) {
        var failure: SocketError?
        let (owner, startFlusher) = state.withLock { state -> (Bool, Bool) in
            guard let startFlusher = admit(in: &state, failure: &failure), !state.failed else { return (false, false) }
            if state.flushing || startFlusher {
                state.queue.append(.copied(Array(header)))
                state.queue.append(.file(data))
                state.queuedBytes += header.count + data.count
                return (false, startFlusher)
            }
            // Taking the sending side as a flusher would: what others send
            // while the data goes out waits in the queue, in order.
            state.flushing = true
            return (true, false)
        }
        if let failure { fail(failure) }
        if startFlusher { startFlushing() }
        guard owner else { return }
        _ = write { () throws(SocketError) in
            try socket.writeAll(header)
            try socket.sendFile(data.descriptor, offset: data.offset, count: data.count)
        }
        // The flusher writes what queued meanwhile, or after a failure
        // releases what was lent.
        let more = state.update { state -> Bool in
            if state.queue.isEmpty { state.flushing = false }
            return !state.queue.isEmpty
        }
        if more { startFlushing() }
    }

    /// Counts a reply that is not gathered, once the gathered ones went
    /// first: if they fill the socket, their remainder is queued and the
    /// flusher they start carries this reply too. With the lock held; nil
    /// once sending has failed, else whether a flusher must start.
    private func admit(in state: inout State, failure: inout SocketError?) -> Bool? {
        guard !state.failed else { return nil }
        state.sent += 1
        return state.gathered.isEmpty ? false : emitGathered(in: &state, failure: &failure)
    }

    func flushBatch() { flushGathered() }

    /// Writes what a send batch gathered.
    private func flushGathered() {
        var failure: SocketError?
        let startFlusher = state.withLock { state -> Bool in
            guard !state.failed, !state.gathered.isEmpty else { return false }
            return emitGathered(in: &state, failure: &failure)
        }
        if let failure { fail(failure) }
        if startFlusher { startFlushing() }
    }

    /// Emits the gathered replies and empties the buffer, keeping its
    /// memory: a fresh one would regrow (past glibc's mmap threshold in
    /// cryptd) for every burst. With the lock held; returns whether a
    /// flusher must start.
    private func emitGathered(in state: inout State, failure: inout SocketError?) -> Bool {
        var gathered: [UInt8] = []
        swap(&gathered, &state.gathered)
        let startFlusher = gathered.withUnsafeBytes { emit($0, release: nil, in: &state, failure: &failure).startFlusher }
        gathered.removeAll(keepingCapacity: true)
        state.gathered = gathered
        return startFlusher
    }

    /// Writes `bytes` as far as the socket takes them without waiting, or
    /// queues them behind a running flusher; with the lock held. Returns
    /// whether a flusher must start and whether `release` is now owed by
    /// the queue.
    private func emit(
        _ bytes: UnsafeRawBufferPointer, release: (@Sendable () -> Void)?, in state: inout State, failure: inout SocketError?
    ) -> (startFlusher: Bool, lent: Bool) {
        guard !state.failed else { return (false, false) }
        func queue(_ part: UnsafeRawBufferPointer) {
            if let release {
                state.queue.append(.lent(part, release: release))
            } else {
                state.queue.append(.copied(Array(part)))
            }
            state.queuedBytes += part.count
        }
        if state.flushing {
            queue(bytes)
            return (false, release != nil)
        }
        var done = 0
        do throws(SocketError) {
            while done < bytes.count {
                let count = try socket.writeAvailable(UnsafeRawBufferPointer(rebasing: bytes[done...]))
                if count == 0 { break }
                done += count
            }
        } catch {
            state.failed = true
            failure = error
            return (false, false)
        }
        guard done < bytes.count else { return (false, false) }
        queue(UnsafeRawBufferPointer(rebasing: bytes[done...]))
        state.flushing = true
        return (true, release != nil)
    }

    /// How long a flusher with nothing to write stays for the next queue.
    /// A consumer slower than the storage reader fills its socket hundreds
    /// of times a second (1 MiB reads of a fragmented volume): a thread
    /// started for each took 700 thread creations a second in the storage
    /// domain, each a fresh stack to lock.
    static let flusherLinger = 0.05

    /// Hands the queue to the parked flusher, or starts one.
    private func startFlushing() {
        // The broadcast wakes the parked flusher, which sees itself claimed.
        let claimed = state.update { state -> Bool in
            guard state.flusherParked else { return false }
            state.flusherParked = false
            return true
        }
        if claimed { return }
        if tryStartThread(stackSize: stackSize, { self.flushAndLinger() }) != 0 {
            // No thread to spare: write the rest here.
            flush(parking: false)
        }
    }

    /// A flusher thread: writes the queue out, then parks for
    /// `flusherLinger` seconds in case `startFlushing` claims it again.
    private func flushAndLinger() {
        while true {
            guard flush(parking: true) else { return }
            let claimed = state.wait(until: { !$0.flusherParked }, timeout: Self.flusherLinger) { _ in true } ?? false
            if claimed { continue }
            // Timed out; unless claimed meanwhile, this thread is done.
            let leave = state.withLock { state -> Bool in
                guard state.flusherParked else { return false }
                state.flusherParked = false
                return true
            }
            if leave { return }
        }
    }

    /// Writes the queue out until it is empty. With `parking`, the calling
    /// thread then stays as the parked flusher (`flusherParked`) and true
    /// is returned; false once sending has failed.
    @discardableResult
    private func flush(parking: Bool) -> Bool {
        while true {
            let (batch, more, parked) = state.update { state -> ([Chunk], Bool, Bool) in
                let batch = state.queue
                state.queue = []
                state.queuedBytes = 0
                if state.failed || batch.isEmpty {
                    state.flushing = false
                    state.flusherParked = parking && !state.failed
                    return (batch, false, state.flusherParked)
                }
                return (batch, true, false)
            }
            var failed = !more
            for chunk in batch {
                switch chunk {
                case .copied(let bytes):
                    if !failed { failed = !write { () throws(SocketError) in try socket.writeAll(bytes) } }
                case .lent(let bytes, let release):
                    if !failed { failed = !write { () throws(SocketError) in try socket.writeAll(bytes) } }
                    release()
                case .file(let range):
                    if !failed {
                        failed = !write { () throws(SocketError) in
                            try socket.sendFile(range.descriptor, offset: range.offset, count: range.count)
                        }
                    }
                }
            }
            guard more else { return parked }
        }
    }

    /// Runs one blocking write; a failure ends the connection.
    private func write(_ body: () throws(SocketError) -> Void) -> Bool {
        do throws(SocketError) {
            try body()
            return true
        } catch {
            state.update { $0.failed = true }
            fail(error)
            return false
        }
    }

    /// Waits while more than `limit` bytes of replies are queued for a
    /// client that does not read them fast enough.
    func waitForRoom(limit: Int) {
        _ = state.wait(until: { $0.queuedBytes <= limit || $0.failed }) { _ in () }
    }

    /// Whether fewer than `limit` bytes are queued (or sending failed).
    func hasRoom(limit: Int) -> Bool {
        state.withLock { $0.queuedBytes <= limit || $0.failed }
    }

    /// Waits, at most `timeout` seconds, until every queued reply is written
    /// or sending has failed.
    func drain(timeout: Double) {
        flushGathered()
        _ = state.wait(until: { !$0.flushing }, timeout: timeout) { _ in () }
    }

    /// A failed send ends the connection: shutting the socket down also
    /// wakes the thread reading requests.
    private func fail(_ error: SocketError) {
        logger.debug("reply failed", metadata: ["error": "\(error)"])
        socket.shutdown()
    }
}
