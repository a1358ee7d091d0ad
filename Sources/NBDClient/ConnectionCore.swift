import Logging
import NBDProtocol
import Sockets
import Threads

/// The shared heart of one NBD connection: the socket, the table of
/// requests in flight, the sending side and the waiting side. The reader
/// thread (ReplyReader.swift) holds it too, so it lives until that thread
/// has finished even if the `NBDConnection` is gone.
final class ConnectionCore: Sendable, SendBatch.Sender {
    let socket: Socket
    let session: ClientSession
    let maxPayload: UInt32
    let requestTimeout: Double?
    let logger: Logger
    let state = Guarded(ConnectionState())
    /// Held while writing to the socket, so each request goes out whole;
    /// holds the requests started inside a `SendBatch`, sent when it ends.
    private let sendLock = Guarded<[UInt8]>([])
    /// Carries lent WRITE payloads to the socket as page references: on
    /// 1 MiB writes, the copy into the socket's buffers took 14% of the
    /// crypt domain's time (`bench/CHAIN.md`, session 15). Nil where no
    /// pipe could be made; lent payloads are then copied.
    private let splicePipe: SplicePipe?

    /// WRITE payloads up to this size are copied behind their header, so a
    /// batch of small requests leaves in few `send` calls; larger ones are
    /// sent from the caller's buffer directly.
    static let inlinePayloadLimit = 64 * 1024
    /// Buffered request bytes are sent once they reach this size.
    static let sendBufferTarget = 256 * 1024

    init(socket: Socket, session: ClientSession, requestTimeout: Double?, logger: Logger) {
        self.socket = socket
        self.session = session
        self.maxPayload = min(session.blockSize?.maximum ?? NBDLimits.maxPayload, NBDLimits.maxPayload)
        self.requestTimeout = requestTimeout
        self.logger = logger
        splicePipe = try? SplicePipe()
    }

    /// What became of one operation of a batch while sending it.
    private enum Slot {
        case sent(cookie: UInt64)
        case finished(Result<Void, NBDClientError>)
    }

    /// Who owns the requests of a batch about to be registered.
    private enum Admission {
        /// Send nothing; the slots left nil become `.finished(.closed)`.
        case refuse
        case waiter(ReplyWaiter)
        case batch(UInt64)
    }

    /// Sends every operation back to back, then waits for all replies.
    func perform(_ operations: [NBDOperation]) -> [Result<Void, NBDClientError>] {
        let waiter = ReplyWaiter()
        let slots = submit(operations) { state, slots, _ in
            if let refusal = state.refusal {
                for index in slots.indices where slots[index] == nil { slots[index] = .finished(.failure(refusal)) }
                return .refuse
            }
            return .waiter(waiter)
        }
        let cookies = slots.compactMap { slot -> UInt64? in
            if case .sent(let cookie)? = slot { cookie } else { nil }
        }
        let outcomes = cookies.isEmpty ? [:] : waitForReplies(cookies, waiter: waiter)
        return slots.map { slot in
            switch slot {
            case .finished(let result)?: result
            case .sent(let cookie)?: outcomes[cookie] ?? .failure(.closed)
            case nil: .failure(.closed)
            }
        }
    }

    /// Sends every operation back to back and returns without waiting;
    /// `completion` gets the results (see `NBDConnection.start`). False,
    /// with nothing sent and `completion` never called, if the connection
    /// is not usable.
    func start(_ operations: [NBDOperation], lending: Bool = false, completion: @escaping BatchCompletion) -> Bool {
        var refused = false
        var immediate: BatchResults?
        _ = submit(operations, gather: true, lending: lending) { state, slots, deadline in
            guard state.refusal == nil else {
                refused = true
                return .refuse
            }
            // The operations the local checks ended; the rest are recorded as their replies arrive.
            var results = BatchResults(successes: slots.count)
            for (index, slot) in slots.enumerated() {
                if case .finished(let result) = slot { results.record(result, at: index) }
            }
            let unanswered = slots.count(where: { $0 == nil })
            guard unanswered > 0 else {
                immediate = results
                return .refuse
            }
            let id = state.nextBatch
            state.nextBatch += 1
            state.batches.insert(
                CallbackBatch(results: results, unanswered: unanswered, deadline: deadline, completion: completion), for: id)
            return .batch(id)
        }
        if refused { return false }
        // Nothing passed the checks, so nothing will answer: report at once.
        if let immediate { completion(immediate) }
        return true
    }

    // MARK: Sending

    /// Registers the operations that pass the local checks, all under one
    /// lock so that none is answered before the rest are registered, then
    /// sends them. `admit` sees the state and the checked slots (nil: to be
    /// sent) and the requests' deadline, and says who owns the requests, or
    /// refuses. In the slots returned, nil is a request never sent: it
    /// ended with `.closed`.
    ///
    /// With `gather` (a started batch, whose caller does not wait), small
    /// requests made inside a `SendBatch` are held and sent together when
    /// the batch ends. With `lending`, large WRITE payloads are spliced
    /// (`NBDConnection.start(_:lending:completion:)`).
    private func submit(
        _ operations: [NBDOperation], gather: Bool = false, lending: Bool = false,
        admit: (inout ConnectionState, inout [Slot?], Double?) -> Admission
    ) -> [Slot?] {
        // Held for the end of the caller's `SendBatch`: nothing is sent
        // here, so `sending` is left alone (the batch's end sets it).
        let gathering = gather && operations.allSatisfy({ $0.inlinePayloadCount <= Self.inlinePayloadLimit }) && SendBatch.enlist(self)
        func header(_ operation: NBDOperation, _ cookie: UInt64) -> RequestHeader {
            RequestHeader(
                flags: operation.flags, command: operation.command, cookie: cookie, offset: operation.offset,
                length: operation.length ?? 0)
        }
        return sendLock.withLock { gathered in
            var slots: [Slot?] = operations.map { operation in
                operation.problem(for: session, maxPayload: maxPayload).map { .finished(.failure(.invalidRequest($0))) }
            }
            // The headers are made again from the slots' cookies when they
            // are encoded: no array of them per batch.
            var sentCount = 0
            // Read once for the batch and its requests: reading the clock
            // twice per 4 KiB READ took 1.3% of the crypt domain's time.
            let deadline = requestTimeout.map { monotonicSeconds() + $0 }
            state.withLock { state in
                let admission = admit(&state, &slots, deadline)
                if case .refuse = admission { return }
                func owner(_ index: Int) -> RequestOwner {
                    switch admission {
                    case .waiter(let waiter): .waiter(waiter)
                    case .batch(let id): .batch(id, slot: index)
                    case .refuse: preconditionFailure("a refused batch registers nothing")
                    }
                }
                for (index, operation) in operations.enumerated() where slots[index] == nil {
                    let header = header(operation, state.nextCookie)
                    state.nextCookie += 1
                    var buffer: UnsafeMutableRawBufferPointer?
                    if case .read(_, let target) = operation { buffer = target }
                    // Registered before any of its bytes leave, so its reply can never arrive first.
                    state.requests.insert(
                        PendingRequest(command: header.command, buffer: buffer, deadline: deadline, outcome: nil, owner: owner(index)),
                        for: header.cookie)
                    state.newlySent.append(header)
                    sentCount += 1
                    slots[index] = .sent(cookie: header.cookie)
                }
                if sentCount > 0, !gathering { state.sending = true }
            }
            guard sentCount > 0 else { return slots }
            if gathering {
                for (index, operation) in operations.enumerated() {
                    guard case .sent(let cookie)? = slots[index] else { continue }
                    header(operation, cookie).encode(into: &gathered)
                    if case .write(_, let payload, _) = operation { gathered.append(contentsOf: payload) }
                }
                return slots
            }
            defer { state.withLock { $0.sending = false } }
            // Whatever is gathered goes first, so no request waits behind a later one.
            flush(&gathered)
            var output: [UInt8] = []
            for (index, operation) in operations.enumerated() {
                guard case .sent(let cookie)? = slots[index] else { continue }
                header(operation, cookie).encode(into: &output)
                if case .write(_, let payload, _) = operation {
                    if payload.count <= Self.inlinePayloadLimit {
                        output.append(contentsOf: payload)
                    } else {
                        flush(&output)
                        send(payload, lent: lending)
                    }
                }
                if output.count >= Self.sendBufferTarget { flush(&output) }
            }
            flush(&output)
            return slots
        }
    }

    func flushBatch() { sendGathered() }

    /// Sends the requests gathered in a send batch, at its end.
    private func sendGathered() {
        sendLock.withLock { gathered in
            guard !gathered.isEmpty else { return }
            state.withLock { $0.sending = true }
            defer { state.withLock { $0.sending = false } }
            flush(&gathered)
        }
    }

    private func flush(_ output: inout [UInt8]) {
        output.withUnsafeBytes { send($0) }
        output.removeAll(keepingCapacity: true)
    }

    /// Sends `bytes`; with `lent`, by reference (`SplicePipe.send`) where
    /// the connection has a pipe. A failure kills the connection.
    private func send(_ bytes: UnsafeRawBufferPointer, lent: Bool = false) {
        guard !bytes.isEmpty, !state.withLock({ $0.socketShutDown }) else { return }
        do throws(SocketError) {
            if lent, let splicePipe {
                try splicePipe.send(bytes, on: socket)
            } else {
                try socket.writeAll(bytes)
            }
        } catch .timedOut {
            fail(.timedOut(.send))
        } catch {
            fail(.connectionLost(error))
        }
    }

    // MARK: Waiting

    /// Waits until every cookie has its outcome and the reader is not
    /// writing into any of their buffers, then takes them out of the table.
    /// The oldest unanswered request's deadline bounds each wait; when it
    /// passes, the connection is declared dead.
    private func waitForReplies(_ cookies: [UInt64], waiter: ReplyWaiter) -> [UInt64: Result<Void, NBDClientError>] {
        // Outcomes never revert, so the scan only moves forward.
        var answered = 0
        let waiting = cookies.count > 8 ? Set(cookies) : []
        func ours(_ cookie: UInt64) -> Bool { waiting.isEmpty ? cookies.contains(cookie) : waiting.contains(cookie) }
        func ready(_ state: ConnectionState) -> Bool {
            while answered < cookies.count, state.requests[cookies[answered]]?.outcome != nil { answered += 1 }
            if let copying = state.copyingCookie, ours(copying) { return false }
            return answered == cookies.count
        }
        while true {
            // Cookies were registered in order, so the first unanswered one
            // has the earliest deadline.
            let (outcomes, deadline) = state.withLock { state -> ([UInt64: Result<Void, NBDClientError>]?, Double?) in
                guard ready(state) else {
                    return (nil, answered < cookies.count ? state.requests[cookies[answered]]?.deadline : nil)
                }
                var outcomes: [UInt64: Result<Void, NBDClientError>] = [:]
                for cookie in cookies {
                    outcomes[cookie] = state.requests.removeValue(for: cookie)?.outcome ?? .failure(.closed)
                }
                return (outcomes, nil)
            }
            if let outcomes { return outcomes }
            if !waiter.sleep(timeout: deadline.map { max(0, $0 - monotonicSeconds()) }),
                !state.withLock({ ready($0) })
            {
                fail(.timedOut(.reply))
            }
        }
    }

    // MARK: Ending

    /// Kills the connection: every waiting request fails with `error`, the
    /// socket is shut down and the reader thread exits.
    func fail(_ error: NBDClientError) {
        guard var wakeups = state.withLock({ $0.fail(error) }) else { return }
        switch error {
        case .closed:
            logger.debug("NBD connection closed")
        default:
            logger.warning("NBD connection failed: \(error)")
        }
        shutDownSocket()
        wakeups.run()
    }

    /// Ends the connection from this side: waiting requests fail with
    /// `.closed`, NBD_CMD_DISC is sent unless another thread is in the
    /// middle of sending (a server that stopped reading must not block
    /// closing), and the socket is shut down.
    func close() {
        guard var wakeups = state.withLock({ $0.fail(.closed) }) else { return }
        defer { wakeups.run() }
        logger.debug("closing NBD connection")
        // No request can be registered any more, so a sender that is not
        // busy now holds the lock only briefly.
        if !state.withLock({ $0.sending }) {
            sendDisconnect()
        }
        shutDownSocket()
    }

    /// NBD_CMD_DISC: a soft disconnect.
    private func sendDisconnect() {
        sendLock.withLock { gathered in
            // Requests still gathered have failed with the connection; none may follow NBD_CMD_DISC.
            gathered.removeAll()
            guard !state.withLock({ $0.socketShutDown }) else { return }
            var bytes: [UInt8] = []
            let cookie = state.withLock { state in
                defer { state.nextCookie += 1 }
                return state.nextCookie
            }
            RequestHeader(command: .disconnect, cookie: cookie, offset: 0, length: 0).encode(into: &bytes)
            try? socket.writeAll(bytes)
        }
    }

    private func shutDownSocket() {
        state.withLock { $0.socketShutDown = true }
        socket.shutdown()
    }
}
