import NBDProtocol
import Sockets
import Threads

/// The reader thread: reads the server's replies, decodes them with
/// ReplyDecoder (which validates everything an untrusted server sends) and
/// completes the matching requests. Any protocol error, EOF or socket error
/// ends the connection. It also enforces the deadlines of callback batches
/// (`NBDConnection.start`), which have no thread waiting for them.
extension ConnectionCore {
    /// Bytes read from the socket per system call.
    static let readChunkSize = 256 * 1024

    /// How often the reader looks for callback batches past their deadline:
    /// the socket's receive timeout, so an idle reader wakes this often too.
    static func deadlineTick(requestTimeout: Double?) -> Double? {
        requestTimeout.map { min(max($0 / 4, 0.01), 1) }
    }

    func readReplies(leftover: [UInt8]) {
        var decoder = ReplyDecoder(structuredReplies: session.structuredReplies, maxPayload: maxPayload)
        // Callers are woken, and completions run, only after everything
        // read so far is decoded: a woken caller tends to preempt this
        // thread, and the replies behind it would wait.
        var wakeups = Wakeups()
        func decodeAndWake() -> Bool {
            let alive = decodeAvailable(&decoder, wakeups: &wakeups)
            if !wakeups.isEmpty { wakeups.run() }
            return alive
        }
        if !leftover.isEmpty {
            decoder.receive(leftover)
            guard decodeAndWake() else { return }
        }
        let tick = Self.deadlineTick(requestTimeout: requestTimeout)
        var nextCheck = tick.map { monotonicSeconds() + $0 }
        let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: Self.readChunkSize, alignment: 16)
        defer { buffer.deallocate() }
        while true {
            // Checked after reads too: a server that keeps answering other
            // requests must not hold one back forever.
            if let tick, let check = nextCheck {
                let now = monotonicSeconds()
                if now >= check {
                    nextCheck = now + tick
                    if let deadline = state.withLock({ $0.earliestBatchDeadline }), now >= deadline {
                        fail(.timedOut(.reply))
                        return
                    }
                }
            }
            let count: Int
            do throws(SocketError) {
                count = try socket.read(into: buffer)
            } catch .timedOut {
                if state.withLock({ $0.socketShutDown }) { return }
                nextCheck = monotonicSeconds()
                continue
            } catch {
                fail(.connectionLost(error))
                return
            }
            guard count > 0 else {
                fail(.connectionLost(.connectionClosed))
                return
            }
            // Requests were registered before their bytes were sent, so any
            // request these bytes can answer is in this list.
            let sent = state.withLock { state in
                defer { state.newlySent.removeAll(keepingCapacity: true) }
                return state.newlySent
            }
            for header in sent { decoder.expect(header) }
            decoder.receive(UnsafeRawBufferPointer(rebasing: buffer[0..<count]))
            guard decodeAndWake() else { return }
        }
    }

    /// Handles every complete event, collecting whom to tell about ended
    /// requests in `wakeups`; false once the connection has died.
    private func decodeAvailable(_ decoder: inout ReplyDecoder, wakeups: inout Wakeups) -> Bool {
        while true {
            let event: ReplyEvent?
            do throws(NBDProtocolError) {
                event = try decoder.next()
            } catch {
                fail(.protocolViolation(error))
                return false
            }
            guard let event else { return true }
            switch event {
            case .data(let cookie, let offset, let bytes):
                let delivered = bytes.withUnsafeBytes { source in
                    deliver(cookie, at: offset, count: source.count, wakeups: &wakeups) { $0.copyMemory(from: source) }
                }
                guard delivered else { return false }
            case .hole(let cookie, let offset, let length):
                let delivered = deliver(cookie, at: offset, count: length, wakeups: &wakeups) {
                    $0.initializeMemory(as: UInt8.self, repeating: 0)
                }
                guard delivered else { return false }
            case .completed(let cookie, let error, let message):
                state.withLock { state in
                    guard let request = state.requests[cookie], request.outcome == nil else { return }
                    if let error {
                        if error == .shutdown { state.serverShuttingDown = true }
                        state.end(cookie, with: .failure(.server(error, message: message)), into: &wakeups)
                    } else {
                        state.end(cookie, with: .success(()), into: &wakeups)
                    }
                }
            }
        }
    }

    /// Lets `fill` write into the part of a READ buffer that a data or hole
    /// chunk covers, unless the request has already ended. False if the
    /// range does not fit the buffer, which ends the connection.
    private func deliver(
        _ cookie: UInt64, at offset: Int, count: Int, wakeups: inout Wakeups, _ fill: (UnsafeMutableRawBufferPointer) -> Void
    ) -> Bool {
        enum Target {
            case write(UnsafeMutableRawBufferPointer)
            case skip
            case outOfRange(UInt64)
        }
        let target: Target = state.withLock { state in
            guard let request = state.requests[cookie], request.outcome == nil, let buffer = request.buffer else {
                return .skip
            }
            // ReplyDecoder already keeps chunks inside their request; checked
            // again because a wrong write here would corrupt the caller's memory.
            guard offset >= 0, count >= 0, count <= buffer.count, offset <= buffer.count - count else {
                return .outOfRange(UInt64(buffer.count))
            }
            state.copyingCookie = cookie
            return .write(UnsafeMutableRawBufferPointer(rebasing: buffer[offset..<(offset + count)]))
        }
        switch target {
        case .skip:
            return true
        case .outOfRange:
            fail(.protocolViolation(.readOutOfRange(cookie: cookie, offset: UInt64(max(offset, 0)), length: UInt64(max(count, 0)))))
            return false
        case .write(let region):
            // SAFETY: the owner of the request keeps the buffer alive and
            // untouched until its request has an outcome and `copyingCookie`
            // no longer names it; both hold until the update below.
            fill(region)
            // The connection may have died meanwhile; its owner then waits
            // only for this copy to end.
            state.withLock { $0.finishCopy(cookie, into: &wakeups) }
            return true
        }
    }
}
