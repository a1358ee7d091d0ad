#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif
import NBDProtocol
import Synchronization

/// POSIX sockets + threads: an accept loop, a thread per connection for the
/// handshake, then `workers` threads per connection that take turns as the
/// reader (one large read() feeds the decoder, and the following workers
/// find requests already decoded), carry out their request with blocking
/// calls, and send the reply under a write lock.
func runPosixServer(socketPath: String, export: Export, workers: Int, readSize: Int, standardMutex: Bool) -> Never {
    let listener = listenUnix(path: socketPath)
    let catalog = ExportCatalog(exports: [export.description], defaultExportName: "probe")
    while true {
        let fd = accept(listener, nil, nil)
        if fd < 0 { continue }
        startThread {
            guard let (session, leftover) = posixHandshake(fd: fd, catalog: catalog) else {
                close(fd)
                return
            }
            let connection = PosixConnection(
                fd: fd, session: session, export: export, workers: workers, readSize: readSize, leftover: leftover,
                standardMutex: standardMutex)
            for _ in 1..<workers { startThread { connection.work() } }
            connection.work()
        }
    }
}

/// Drives `ServerHandshake` with blocking reads; returns the session and
/// any transmission bytes that came with the last option.
private func posixHandshake(fd: Int32, catalog: ExportCatalog) -> (NegotiatedSession, [UInt8])? {
    var handshake = ServerHandshake(catalog: catalog)
    guard writeAll(fd, handshake.greeting()) else { return nil }
    var buffer = [UInt8](repeating: 0, count: 4096)
    while true {
        let count = buffer.withUnsafeMutableBytes { readSome(fd, $0) }
        guard count > 0 else { return nil }
        for event in handshake.receive(buffer[..<count]) {
            switch event {
            case .send(let bytes):
                guard writeAll(fd, bytes) else { return nil }
            case .transmission(let session):
                return (session, handshake.takeLeftover())
            case .close:
                return nil
            }
        }
    }
}

private struct ReaderState: ~Copyable {
    var decoder = RequestDecoder()
    var closed = false
    // SAFETY: only used with the reader lock held; freed by the last worker.
    let buffer: UnsafeMutableRawBufferPointer
}

final class PosixConnection: Sendable {
    let fd: Int32
    let session: NegotiatedSession
    let export: Export
    private let reader: Locked<ReaderState>
    private let writer: Locked<Void>
    private let running: Atomic<Int>

    init(
        fd: Int32, session: NegotiatedSession, export: Export, workers: Int, readSize: Int, leftover: [UInt8],
        standardMutex: Bool
    ) {
        self.fd = fd
        self.session = session
        self.export = export
        var state = ReaderState(buffer: .allocate(byteCount: readSize, alignment: 64))
        state.decoder.receive(leftover)
        reader = Locked(state, standardMutex: standardMutex)
        writer = Locked((), standardMutex: standardMutex)
        running = Atomic(workers)
    }

    /// One worker: take the next request (reading if none is decoded yet),
    /// carry it out, reply; until the stream ends or the client disconnects.
    func work() {
        // Each worker reuses one reply buffer, grown to the largest READ seen.
        var replyBuffer = UnsafeMutableRawBufferPointer.allocate(byteCount: 64 * 1024, alignment: 4096)
        defer { replyBuffer.deallocate() }
        while let request = nextRequest() {
            switch perform(request, session: session, export: export) {
            case .disconnect:
                reader.withLock { $0.closed = true }
                shutdown(fd, Int32(SHUT_RD))
            case .reply(let bytes):
                _ = writer.withLock { _ in writeAll(fd, bytes) }
            case .read(let cookie, let offset, let length):
                let total = ReplyEncoder.readReplyHeaderLength(structured: session.structuredReplies) + length
                if replyBuffer.count < total {
                    replyBuffer.deallocate()
                    replyBuffer = .allocate(byteCount: total, alignment: 4096)
                }
                let reply = UnsafeMutableRawBufferPointer(rebasing: replyBuffer[..<total])
                if fillReadReply(reply, cookie: cookie, offset: offset, structured: session.structuredReplies, export: export) {
                    _ = writer.withLock { _ in writeAll(fd, UnsafeRawBufferPointer(reply)) }
                } else {
                    let bytes = readFailure(cookie: cookie, structured: session.structuredReplies)
                    _ = writer.withLock { _ in writeAll(fd, bytes) }
                }
            }
        }
        if running.subtract(1, ordering: .acquiringAndReleasing).newValue == 0 {
            reader.withLock { $0.buffer.deallocate() }
            close(fd)
        }
    }

    private func nextRequest() -> IncomingRequest? {
        reader.withLock { state -> IncomingRequest? in
            while !state.closed {
                do {
                    if let request = try state.decoder.next() { return request }
                } catch {
                    state.closed = true
                    return nil
                }
                let count = readSome(fd, state.buffer)
                guard count > 0 else {
                    state.closed = true
                    return nil
                }
                state.decoder.receive(UnsafeRawBufferPointer(rebasing: state.buffer[..<count]))
            }
            return nil
        }
    }
}
