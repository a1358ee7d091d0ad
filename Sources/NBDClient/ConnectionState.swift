import NBDProtocol
import Threads

/// Wakes the one thread waiting for a batch of requests, and only it: with
/// a shared condition every reply would wake every waiting caller.
final class ReplyWaiter: Sendable {
    private let signalled = Guarded(false)

    func wake() { signalled.update { $0 = true } }

    /// Sleeps until woken since the last sleep, or for at most `timeout`
    /// seconds; false if the time ran out.
    func sleep(timeout: Double?) -> Bool {
        signalled.wait(until: { $0 }, timeout: timeout) { $0 = false } != nil
    }
}

/// A request sent and not yet collected by its caller.
struct PendingRequest {
    let command: Command
    /// Where READ data goes. Only the reader thread writes into it, and only
    /// while the request is pending and `copyingCookie` names it, so the
    /// caller (who waits for both to clear) never sees a write after return.
    let buffer: UnsafeMutableRawBufferPointer?
    /// When the request times out (monotonic seconds), if it has a timeout.
    let deadline: Double?
    /// Set once the reply is complete or the connection died.
    var outcome: Result<Void, NBDClientError>?
    /// The caller waiting for this request.
    let waiter: ReplyWaiter
}

/// Everything the sending threads, the waiting threads and the reader
/// thread share; always accessed under `Guarded`'s lock.
struct ConnectionState {
    /// Cookies are never reused on a connection, so a late or duplicate
    /// reply can never be mistaken for another request's.
    var nextCookie: UInt64 = 1
    var requests: [UInt64: PendingRequest] = [:]
    /// Requests registered since the reader last looked; it hands them to
    /// its ReplyDecoder before decoding bytes that could answer them.
    var newlySent: [RequestHeader] = []
    /// The READ whose buffer the reader thread is writing into right now.
    var copyingCookie: UInt64?
    /// Why the connection is dead; nil while it is usable.
    var failure: NBDClientError?
    /// The server answered NBD_ESHUTDOWN: send nothing more (proto.md,
    /// "Terminating the transmission phase").
    var serverShuttingDown = false
    /// The socket has been shut down; nothing more can be sent.
    var socketShutDown = false
    /// A thread holds the send lock and is writing requests.
    var sending = false

    /// Ends the connection: every request without an outcome gets `error`.
    /// Returns the callers to wake, or nil if it had already ended.
    mutating func fail(_ error: NBDClientError) -> [ReplyWaiter]? {
        guard failure == nil else { return nil }
        failure = error
        var waiters: [ReplyWaiter] = []
        for (cookie, request) in requests where request.outcome == nil {
            requests[cookie]?.outcome = .failure(error)
            waiters.append(request.waiter)
        }
        return waiters
    }
}
