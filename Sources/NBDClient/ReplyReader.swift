import NBDProtocol
import Sockets

/// The reader thread: reads the server's replies, decodes them with
/// ReplyDecoder (which validates everything an untrusted server sends) and
/// completes the matching requests. Any protocol error, EOF or socket error
/// ends the connection.
extension ConnectionCore {
    /// Bytes read from the socket per system call.
    static let readChunkSize = 256 * 1024

    func readReplies(leftover: [UInt8]) {
        var decoder = ReplyDecoder(structuredReplies: session.structuredReplies, maxPayload: maxPayload)
        // Callers are woken only after everything read so far is decoded: a
        // woken caller tends to preempt this thread, and the replies behind
        // it would wait.
        var completed: [ReplyWaiter] = []
        func decodeAndWake() -> Bool {
            let alive = decodeAvailable(&decoder, completed: &completed)
            for waiter in completed { waiter.wake() }
            completed.removeAll(keepingCapacity: true)
            return alive
        }
        if !leftover.isEmpty {
            decoder.receive(leftover)
            guard decodeAndWake() else { return }
        }
        let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: Self.readChunkSize, alignment: 16)
        defer { buffer.deallocate() }
        while true {
            let count: Int
            do throws(SocketError) {
                count = try socket.read(into: buffer)
            } catch .timedOut {
                // Idle is fine; waiters enforce the request deadlines.
                if state.withLock({ $0.socketShutDown }) { return }
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

    /// Handles every complete event, adding the callers of completed
    /// requests to `completed`; false once the connection has died.
    private func decodeAvailable(_ decoder: inout ReplyDecoder, completed: inout [ReplyWaiter]) -> Bool {
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
                    deliver(cookie, at: offset, count: source.count) { $0.copyMemory(from: source) }
                }
                guard delivered else { return false }
            case .hole(let cookie, let offset, let length):
                guard deliver(cookie, at: offset, count: length, { $0.initializeMemory(as: UInt8.self, repeating: 0) })
                else { return false }
            case .completed(let cookie, let error, let message):
                let waiter = state.withLock { state -> ReplyWaiter? in
                    guard let request = state.requests[cookie], request.outcome == nil else { return nil }
                    if let error {
                        state.requests[cookie]?.outcome = .failure(.server(error, message: message))
                        if error == .shutdown { state.serverShuttingDown = true }
                    } else {
                        state.requests[cookie]?.outcome = .success(())
                    }
                    return request.waiter
                }
                if let waiter { completed.append(waiter) }
            }
        }
    }

    /// Lets `fill` write into the part of a READ buffer that a data or hole
    /// chunk covers, unless the request has already ended. False if the
    /// range does not fit the buffer, which ends the connection.
    private func deliver(
        _ cookie: UInt64, at offset: Int, count: Int, _ fill: (UnsafeMutableRawBufferPointer) -> Void
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
            // SAFETY: the caller of `perform` keeps the buffer alive and
            // untouched until its request has an outcome and `copyingCookie`
            // no longer names it; both hold until the update below.
            fill(region)
            // The connection may have died meanwhile; its caller then waits
            // only for this copy to end.
            let waiter = state.withLock { state -> ReplyWaiter? in
                state.copyingCookie = nil
                guard let request = state.requests[cookie], request.outcome != nil else { return nil }
                return request.waiter
            }
            waiter?.wake()
            return true
        }
    }
}
