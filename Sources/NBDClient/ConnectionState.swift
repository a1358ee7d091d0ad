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

/// Called once with one result per operation of a batch started without
/// waiting (`NBDConnection.start`).
typealias BatchCompletion = @Sendable (BatchResults) -> Void

/// Who learns that a request ended.
enum RequestOwner {
    /// A thread sleeping in `perform`; it collects the outcome itself.
    case waiter(ReplyWaiter)
    /// Operation `slot` of the callback batch `batch` (`ConnectionState.batches`).
    case batch(UInt64, slot: Int)
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
    let owner: RequestOwner
}

/// A batch started without a waiting thread: its results so far and the
/// closure that gets them once every operation has one.
struct CallbackBatch {
    /// One per operation, recorded as replies arrive.
    var results: BatchResults
    /// Operations still without a result.
    var unanswered: Int
    /// When its requests time out (monotonic seconds), if they do.
    let deadline: Double?
    let completion: BatchCompletion
}

/// Completions and wake-ups collected under the lock, run after it is
/// released: a completion may take other locks, and a woken caller tends
/// to preempt the thread that woke it.
struct Wakeups {
    var waiters: [ReplyWaiter] = []
    /// Whole batches, not (completion, results) tuples: a closure stored
    /// in an array's tuple element is reabstracted, one allocation per
    /// completed batch.
    var batches: [CallbackBatch] = []

    var isEmpty: Bool { waiters.isEmpty && batches.isEmpty }

    mutating func run() {
        for waiter in waiters { waiter.wake() }
        // The consumer replies these completions send leave together.
        SendBatch.run {
            for batch in batches { batch.completion(batch.results) }
        }
        waiters.removeAll(keepingCapacity: true)
        batches.removeAll(keepingCapacity: true)
    }
}

/// Everything the sending threads, the waiting threads and the reader
/// thread share; always accessed under `Guarded`'s lock.
struct ConnectionState {
    /// Cookies are never reused on a connection, so a late or duplicate
    /// reply can never be mistaken for another request's.
    var nextCookie: UInt64 = 1
    var requests = CookieTable<PendingRequest>()
    /// Callback batches with requests in flight, by batch number (numbered
    /// like cookies, so they share the table).
    var batches = CookieTable<CallbackBatch>()
    var nextBatch: UInt64 = 1
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

    /// Gives a request the outcome it ended with and tells its owner:
    /// a waiter is added to `wakeups`; a callback request is forgotten, and
    /// its batch's completion is added once that was the batch's last.
    /// A callback READ whose buffer the reader is still writing keeps its
    /// outcome until the copy ends (`finishCopy`).
    mutating func end(_ cookie: UInt64, with outcome: Result<Void, NBDClientError>, into wakeups: inout Wakeups) {
        guard let request = requests[cookie], request.outcome == nil else { return }
        switch request.owner {
        case .waiter(let waiter):
            requests.update(cookie) { $0.outcome = outcome }
            wakeups.waiters.append(waiter)
        case .batch:
            if copyingCookie == cookie {
                requests.update(cookie) { $0.outcome = outcome }
            } else {
                forget(cookie, outcome: outcome, into: &wakeups)
            }
        }
    }

    /// The reader finished writing into `cookie`'s buffer: an outcome that
    /// arrived meanwhile (the connection died) can now be handed over.
    mutating func finishCopy(_ cookie: UInt64, into wakeups: inout Wakeups) {
        copyingCookie = nil
        guard let request = requests[cookie], let outcome = request.outcome else { return }
        switch request.owner {
        case .waiter(let waiter): wakeups.waiters.append(waiter)
        case .batch: forget(cookie, outcome: outcome, into: &wakeups)
        }
    }

    /// Takes a callback request out of the table and records its result.
    private mutating func forget(_ cookie: UInt64, outcome: Result<Void, NBDClientError>, into wakeups: inout Wakeups) {
        guard case .batch(let id, let slot) = requests.removeValue(for: cookie)?.owner else { return }
        let answered = batches.update(id) { batch in
            batch.results.record(outcome, at: slot)
            batch.unanswered -= 1
            return batch.unanswered == 0
        }
        if answered == true, let batch = batches.removeValue(for: id) {
            wakeups.batches.append(batch)
        }
    }

    /// Why no request may be sent now, or nil if they may.
    var refusal: NBDClientError? {
        if let failure { return failure }
        if serverShuttingDown { return .server(.shutdown, message: "the server is shutting down") }
        return nil
    }

    /// The earliest deadline of a callback batch still in flight.
    var earliestBatchDeadline: Double? {
        batches.allValues.lazy.compactMap(\.deadline).min()
    }

    /// Ends the connection: every request without an outcome gets `error`.
    /// Returns whom to tell, or nil if it had already ended.
    mutating func fail(_ error: NBDClientError) -> Wakeups? {
        guard failure == nil else { return nil }
        failure = error
        var wakeups = Wakeups()
        for cookie in requests.cookies { end(cookie, with: .failure(error), into: &wakeups) }
        return wakeups
    }
}
