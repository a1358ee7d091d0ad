import NBDProtocol

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
    /// Returns false if it had already ended.
    mutating func fail(_ error: NBDClientError) -> Bool {
        guard failure == nil else { return false }
        failure = error
        for (cookie, request) in requests where request.outcome == nil {
            requests[cookie]?.outcome = .failure(error)
        }
        return true
    }
}
