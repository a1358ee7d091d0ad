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
    /// READ payload still to come beyond this many bytes is read from the
    /// socket straight into the caller's buffer; smaller remainders arrive
    /// with the next ordinary read, which may bring further replies too.
    static let directReadThreshold = 64 * 1024

    /// How often the reader looks for callback batches past their deadline:
    /// the socket's receive timeout, so an idle reader wakes this often too.
    static func deadlineTick(requestTimeout: Double?) -> Double? {
        requestTimeout.map { min(max($0 / 4, 0.01), 1) }
    }

    func readReplies(leftover: [UInt8]) {
        var decoder = ReplyDecoder(structuredReplies: session.structuredReplies, maxPayload: maxPayload, transfersData: true)
        // Callers are woken, and completions run, only after everything
        // read so far is decoded: a woken caller tends to preempt this
        // thread, and the replies behind it would wait.
        var wakeups = Wakeups()
        var clock = DeadlineClock(tick: Self.deadlineTick(requestTimeout: requestTimeout))
        // Where the payload of a READ whose request has ended is dropped.
        let scratch = UnsafeMutableRawBufferPointer.allocate(byteCount: Self.directReadThreshold, alignment: 16)
        defer { scratch.deallocate() }
        var sent: [RequestHeader] = []
        func decodeAndWake() -> Bool {
            var alive = true
            while alive {
                alive = decodeAvailable(&decoder, wakeups: &wakeups)
                // A large payload still on its way is read from the socket
                // directly; the callers already answered need not wait for it.
                guard alive, let transfer = decoder.transfer, transfer.remaining >= Self.directReadThreshold else { break }
                if !wakeups.isEmpty { wakeups.run() }
                alive = readTransfer(transfer, &decoder, scratch: scratch, clock: &clock, wakeups: &wakeups)
            }
            if !wakeups.isEmpty { wakeups.run() }
            return alive
        }
        if !leftover.isEmpty {
            decoder.receive(leftover)
            guard decodeAndWake() else { return }
        }
        while true {
            // Checked after reads too: a server that keeps answering other
            // requests must not hold one back forever.
            guard checkDeadlines(&clock) else { return }
            let count: Int
            do throws(SocketError) {
                // Straight into the decoder's input: no copy through a buffer of our own.
                count = try decoder.receive(upTo: Self.readChunkSize) { room throws(SocketError) in try socket.read(into: room) }
            } catch .timedOut {
                if state.withLock({ $0.socketShutDown }) { return }
                clock.checkNow()
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
            // request these bytes can answer is in this list. Swapped with
            // the reader's emptied one: two buffers take turns, none is
            // allocated per read.
            state.withLock { swap(&sent, &$0.newlySent) }
            for header in sent { decoder.expect(header) }
            sent.removeAll(keepingCapacity: true)
            guard decodeAndWake() else { return }
        }
    }

    /// Fails the connection if a callback batch is past its deadline, when
    /// the clock says it is time to look; false if it did.
    private func checkDeadlines(_ clock: inout DeadlineClock) -> Bool {
        guard let now = clock.due() else { return true }
        if let deadline = state.withLock({ $0.earliestBatchDeadline }), now >= deadline {
            fail(.timedOut(.reply))
            return false
        }
        return true
    }

    /// Handles every complete event and places the buffered part of READ
    /// payloads, collecting whom to tell about ended requests in `wakeups`;
    /// false once the connection has died.
    private func decodeAvailable(_ decoder: inout ReplyDecoder, wakeups: inout Wakeups) -> Bool {
        // The request whose buffer a copy here last wrote, while its
        // `finishCopy` waits for the next lock taken: almost always the one
        // that completes the same request, so a READ reply costs one lock
        // fewer. `copyingCookie` names it until then, as during the copy.
        var copied: UInt64?
        defer {
            if let copied { state.withLock { $0.finishCopy(copied, into: &wakeups) } }
        }
        while true {
            let event: ReplyEvent?
            do throws(NBDProtocolError) {
                event = try decoder.next()
                if event == nil, let transfer = decoder.transfer, decoder.bufferedTransferBytes > 0 {
                    try placeBuffered(transfer, &decoder, copied: &copied, wakeups: &wakeups)
                    continue
                }
            } catch {
                fail(.protocolViolation(error))
                return false
            }
            guard let event else { return true }
            switch event {
            case .data(let cookie, let offset, let bytes):
                let delivered = bytes.withUnsafeBytes { source in
                    deliver(cookie, at: offset, count: source.count, copied: &copied, wakeups: &wakeups) { $0.copyMemory(from: source) }
                }
                guard delivered else { return false }
            case .hole(let cookie, let offset, let length):
                let delivered = deliver(cookie, at: offset, count: length, copied: &copied, wakeups: &wakeups) {
                    $0.initializeMemory(as: UInt8.self, repeating: 0)
                }
                guard delivered else { return false }
            case .completed(let cookie, let error, let message):
                state.withLock { state in
                    if let finished = copied {
                        state.finishCopy(finished, into: &wakeups)
                        copied = nil
                    }
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

    /// Copies the transfer's buffered payload bytes into the request's
    /// buffer, or drops them if the request has ended.
    private func placeBuffered(
        _ transfer: DataTransfer, _ decoder: inout ReplyDecoder, copied: inout UInt64?, wakeups: inout Wakeups
    ) throws(NBDProtocolError) {
        let count = decoder.bufferedTransferBytes
        switch beginCopy(transfer.cookie, at: transfer.offset, count: count, finishing: &copied, wakeups: &wakeups) {
        case .skip:
            try decoder.takeTransferBytes(count, into: nil)
        case .outOfRange:
            throw .readOutOfRange(cookie: transfer.cookie, offset: UInt64(transfer.offset), length: UInt64(count))
        case .write(let region):
            // SAFETY: see `deliver`; the copy ends below, even if the decoder throws.
            defer { copied = transfer.cookie }
            try decoder.takeTransferBytes(count, into: region)
        }
    }

    /// Reads the rest of a transfer's payload (nothing of it is buffered)
    /// from the socket straight into the request's buffer, or into
    /// `scratch` to drop it if the request has ended. False once the
    /// connection has died.
    private func readTransfer(
        _ transfer: DataTransfer, _ decoder: inout ReplyDecoder, scratch: UnsafeMutableRawBufferPointer,
        clock: inout DeadlineClock, wakeups: inout Wakeups
    ) -> Bool {
        var none: UInt64?
        switch beginCopy(transfer.cookie, at: transfer.offset, count: transfer.remaining, finishing: &none, wakeups: &wakeups) {
        case .outOfRange:
            fail(.protocolViolation(.readOutOfRange(cookie: transfer.cookie, offset: UInt64(transfer.offset), length: UInt64(transfer.remaining))))
            return false
        case .skip:
            var left = transfer.remaining
            while left > 0 {
                let piece = UnsafeMutableRawBufferPointer(rebasing: scratch[0..<min(left, scratch.count)])
                guard readExactly(into: piece, clock: &clock) else { return false }
                left -= piece.count
            }
        case .write(let region):
            // SAFETY: see `deliver`; the region stays ours until finishCopy.
            let complete = readExactly(into: region, clock: &clock)
            state.withLock { $0.finishCopy(transfer.cookie, into: &wakeups) }
            guard complete else { return false }
        }
        do throws(NBDProtocolError) {
            try decoder.transferReceived(transfer.remaining)
        } catch {
            fail(.protocolViolation(error))
            return false
        }
        return true
    }

    /// Fills `region` from the socket, enforcing the callback deadlines
    /// meanwhile; false (the connection has failed) if it cannot.
    private func readExactly(into region: UnsafeMutableRawBufferPointer, clock: inout DeadlineClock) -> Bool {
        var done = 0
        while done < region.count {
            guard checkDeadlines(&clock) else { return false }
            do throws(SocketError) {
                let count = try socket.read(into: UnsafeMutableRawBufferPointer(rebasing: region[done...]))
                guard count > 0 else {
                    fail(.connectionLost(.connectionClosed))
                    return false
                }
                done += count
            } catch .timedOut {
                if state.withLock({ $0.socketShutDown }) { return false }
                clock.checkNow()
            } catch {
                fail(.connectionLost(error))
                return false
            }
        }
        return true
    }

    private enum CopyTarget {
        case write(UnsafeMutableRawBufferPointer)
        case skip
        case outOfRange
    }

    /// The part of a READ buffer that `count` bytes at `offset` cover, now
    /// marked as being written (`copyingCookie`) until `finishCopy`; `.skip`
    /// if the request has already ended. A copy that ended before
    /// (`finishing`) is finished first, under the same lock.
    private func beginCopy(
        _ cookie: UInt64, at offset: Int, count: Int, finishing: inout UInt64?, wakeups: inout Wakeups
    ) -> CopyTarget {
        state.withLock { state in
            if let finished = finishing {
                state.finishCopy(finished, into: &wakeups)
                finishing = nil
            }
            guard let request = state.requests[cookie], request.outcome == nil, let buffer = request.buffer else {
                return .skip
            }
            // ReplyDecoder already keeps chunks inside their request; checked
            // again because a wrong write here would corrupt the caller's memory.
            guard offset >= 0, count >= 0, count <= buffer.count, offset <= buffer.count - count else {
                return .outOfRange
            }
            state.copyingCookie = cookie
            return .write(UnsafeMutableRawBufferPointer(rebasing: buffer[offset..<(offset + count)]))
        }
    }

    /// Lets `fill` write into the part of a READ buffer that a data or hole
    /// chunk covers, unless the request has already ended. False if the
    /// range does not fit the buffer, which ends the connection.
    private func deliver(
        _ cookie: UInt64, at offset: Int, count: Int, copied: inout UInt64?, wakeups: inout Wakeups,
        _ fill: (UnsafeMutableRawBufferPointer) -> Void
    ) -> Bool {
        switch beginCopy(cookie, at: offset, count: count, finishing: &copied, wakeups: &wakeups) {
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
            // only for this copy to end, which the next lock records.
            copied = cookie
            return true
        }
    }
}

/// When the reader next looks for callback batches past their deadline.
struct DeadlineClock {
    /// Seconds between looks; nil when requests have no deadline.
    let tick: Double?
    private var next: Double?

    init(tick: Double?) {
        self.tick = tick
        next = tick.map { monotonicSeconds() + $0 }
    }

    /// Look at the next opportunity (the socket read timed out).
    mutating func checkNow() {
        if tick != nil { next = 0 }
    }

    /// The current time if it is time to look, and the next look scheduled.
    mutating func due() -> Double? {
        guard let tick, let next else { return nil }
        let now = monotonicSeconds()
        guard now >= next else { return nil }
        self.next = now + tick
        return now
    }
}
