import Logging
import Sockets
import Threads

/// The sending side of one connection: replies go out whole and in the
/// order `send` was called, and `send` never blocks. A reply is written on
/// the caller's thread as far as the socket takes it without waiting; what
/// does not fit is copied to a queue that a flusher thread writes out
/// (blocking, up to the reply timeout), and replies sent meanwhile queue
/// behind it. The caller may be the storage connection's reader thread,
/// which every volume's replies depend on: a consumer that stops reading
/// must stall only itself.
final class ReplyChannel: Sendable {
    private struct State {
        var queue: [[UInt8]] = []
        var queuedBytes = 0
        /// A flusher thread owns the socket's sending side.
        var flushing = false
        /// A send failed: the connection is ending, nothing more goes out.
        var failed = false
        var sent: UInt64 = 0
    }

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

    /// Sends one whole reply after every reply sent before it.
    func send(_ bytes: UnsafeRawBufferPointer) {
        var failure: SocketError?
        let startFlusher = state.withLock { state -> Bool in
            guard !state.failed else { return false }
            state.sent += 1
            if state.flushing {
                state.queue.append(Array(bytes))
                state.queuedBytes += bytes.count
                return false
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
                return false
            }
            guard done < bytes.count else { return false }
            state.queue.append(Array(bytes[done...]))
            state.queuedBytes += bytes.count - done
            state.flushing = true
            return true
        }
        if let failure { fail(failure) }
        guard startFlusher else { return }
        if tryStartThread(stackSize: stackSize, { self.flush() }) != 0 {
            // No thread to spare: write the rest here.
            flush()
        }
    }

    /// Writes the queue out until it is empty.
    private func flush() {
        while true {
            let batch = state.update { state -> [[UInt8]]? in
                if state.failed || state.queue.isEmpty {
                    state.queue = []
                    state.queuedBytes = 0
                    state.flushing = false
                    return nil
                }
                defer {
                    state.queue = []
                    state.queuedBytes = 0
                }
                return state.queue
            }
            guard let batch else { return }
            do throws(SocketError) {
                for bytes in batch { try socket.writeAll(bytes) }
            } catch {
                state.update { $0.failed = true }
                fail(error)
            }
        }
    }

    /// Waits while more than `limit` bytes of replies are queued for a
    /// client that does not read them fast enough.
    func waitForRoom(limit: Int) {
        _ = state.wait(until: { $0.queuedBytes <= limit || $0.failed }) { _ in () }
    }

    /// Waits, at most `timeout` seconds, until every queued reply is written
    /// or sending has failed.
    func drain(timeout: Double) {
        _ = state.wait(until: { !$0.flushing }, timeout: timeout) { _ in () }
    }

    /// A failed send ends the connection: shutting the socket down also
    /// wakes the thread reading requests.
    private func fail(_ error: SocketError) {
        logger.debug("reply failed", metadata: ["error": "\(error)"])
        socket.shutdown()
    }
}
