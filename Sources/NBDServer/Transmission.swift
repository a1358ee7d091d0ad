#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif
import BlockDevice
import Logging
import NBDProtocol
import Sockets
import Threads

/// The transmission phase of one connection (proto.md, "Transmission").
/// Worker threads take turns holding the read lock: the holder decodes the
/// next request from what has been read, reading another large chunk from
/// the socket only when the decoder runs dry, then releases the lock and
/// executes its request while the next worker reads. Replies are sent
/// whole under the write lock, in whatever order requests complete.
final class Transmission: Sendable {
    /// State behind the read lock.
    private struct Reader {
        var decoder: RequestDecoder
        let chunk: UnsafeMutableRawBufferPointer
        /// No more requests are taken: NBD_CMD_DISC, end of stream, a
        /// framing error, or a failed reply.
        var stopped = false
    }

    /// Payload still to come above which a WRITE's payload is read from
    /// the socket straight into its buffer: one copy fewer for large writes,
    /// while small ones keep arriving many to a read.
    static let directPayloadThreshold = 64 * 1024

    private let connection: Connection
    private let session: NegotiatedSession
    private let device: any BlockDevice
    private let reader: Guarded<Reader>
    /// Held while sending a reply, so replies never interleave; counts the
    /// replies sent.
    private let writer = Guarded<UInt64>(0)
    /// READ reply buffers not in use, most recently used last; at most one
    /// per worker.
    private let replyBuffers = Guarded<[ReplyBuffer]>([])
    /// Workers still running; the last one out closes the connection.
    private let activeWorkers = Guarded(0)

    init(connection: Connection, session: NegotiatedSession, device: any BlockDevice, leftover: [UInt8]) {
        self.connection = connection
        self.session = session
        self.device = device
        var decoder = RequestDecoder(maxPayload: session.export.blockSize.maximum)
        decoder.receive(leftover)
        let chunk = UnsafeMutableRawBufferPointer.allocate(
            byteCount: connection.server.configuration.readChunkSize, alignment: 64)
        reader = Guarded(Reader(decoder: decoder, chunk: chunk))
    }

    deinit {
        reader.withLock { $0.chunk.deallocate() }
    }

    private var logger: Logger { connection.logger }
    private var socket: Socket { connection.socket }

    /// Serves requests until the connection ends, on this thread and on
    /// `workersPerConnection - 1` more.
    func run() {
        let workers = connection.server.configuration.workersPerConnection
        activeWorkers.withLock { $0 = workers }
        for _ in 1..<workers {
            let error = tryStartThread(stackSize: connection.server.configuration.threadStackSize) { self.work() }
            if error != 0 {
                // Out of threads: serve with fewer workers. This thread's
                // own count keeps the total above zero.
                activeWorkers.withLock { $0 -= 1 }
                logger.warning("cannot start a worker thread", metadata: ["errno": "\(error)"])
            }
        }
        work()
    }

    private func work() {
        while let request = nextRequest() {
            handle(request)
        }
        let last = activeWorkers.withLock { count -> Bool in
            count -= 1
            return count == 0
        }
        if last {
            logger.debug("transmission ended", metadata: ["replies": "\(writer.withLock { $0 })"])
            connection.end()
        }
    }

    /// Takes the next request under the read lock, reading from the socket
    /// as needed. Nil once the connection is to end.
    private func nextRequest() -> IncomingRequest? {
        reader.withLock { state -> IncomingRequest? in
            while !state.stopped {
                do throws(NBDProtocolError) {
                    if let request = try state.decoder.next() {
                        guard request.header.command != .disconnect else {
                            logger.debug("client sent NBD_CMD_DISC")
                            state.stopped = true
                            return nil
                        }
                        return request
                    }
                } catch {
                    logger.warning("closing: protocol error", metadata: ["error": "\(error)"])
                    state.stopped = true
                    return nil
                }
                do throws(SocketError) {
                    if state.decoder.missingPayloadCount >= Self.directPayloadThreshold {
                        // Most of a large WRITE payload is still to come:
                        // read it straight into place rather than through
                        // the decoder's buffer.
                        return try state.decoder.completePendingWrite { buffer throws(SocketError) in
                            try socket.readExactly(into: buffer)
                        }
                    }
                    let count = try socket.read(into: state.chunk)
                    guard count > 0 else {
                        logger.debug("end of the request stream")
                        state.stopped = true
                        return nil
                    }
                    state.decoder.receive(UnsafeRawBufferPointer(rebasing: state.chunk[..<count]))
                } catch {
                    logger.debug("read failed", metadata: ["error": "\(error)"])
                    state.stopped = true
                    return nil
                }
            }
            return nil
        }
    }

    private func handle(_ request: IncomingRequest) {
        let header = request.header
        if let error = validate(header, payloadDiscarded: request.payloadDiscarded, session: session) {
            logger.debug("refused request", metadata: ["command": "\(header.command)", "error": "\(error)"])
            sendCompletion(header, error: error, message: rejectionMessage(header, error, session.export))
            return
        }
        do throws(BlockDeviceError) {
            switch header.command {
            case .read:
                try read(header)
                return
            case .write:
                try write(header, request.payload)
            case .flush:
                try device.flush()
            case .trim:
                try device.trim(at: header.offset, length: UInt64(header.length), fua: header.flags.contains(.fua))
            case .writeZeroes:
                var flags: ZeroFlags = []
                if header.flags.contains(.fua) { flags.insert(.fua) }
                if header.flags.contains(.noHole) { flags.insert(.noHole) }
                if header.flags.contains(.fastZero) { flags.insert(.fast) }
                try device.writeZeroes(at: header.offset, length: UInt64(header.length), flags: flags)
            default:
                // validate() lets through only the commands above.
                sendCompletion(header, error: .invalid, message: "\(header.command) is not supported")
                return
            }
            sendCompletion(header, error: nil)
        } catch {
            let code = error.nbdError(for: header.command)
            if error.isStorageFailure {
                logger.error("\(header.command) failed", metadata: ["error": "\(error)", "reply": "\(code)"])
            } else {
                logger.debug("\(header.command) failed", metadata: ["error": "\(error)", "reply": "\(code)"])
            }
            sendCompletion(header, error: code, message: error.description)
        }
    }

    /// NBD_CMD_READ: the device reads straight into the reply buffer, behind
    /// the reply header, and the whole reply goes out in one send.
    private func read(_ header: RequestHeader) throws(BlockDeviceError) {
        // The buffer used last is the one most likely still in the CPU cache.
        let replyBuffer = replyBuffers.withLock { $0.popLast() } ?? ReplyBuffer(alignment: Int(device.minimumBlockSize))
        defer {
            replyBuffer.trim()
            replyBuffers.withLock { $0.append(replyBuffer) }
        }
        let headerLength = ReplyEncoder.readReplyHeaderLength(structured: session.structuredReplies)
        guard let (reply, data) = replyBuffer.prepare(headerLength: headerLength, dataLength: Int(header.length))
        else {
            sendCompletion(header, error: .outOfMemory, message: "cannot allocate \(header.length) bytes")
            return
        }
        try device.read(at: header.offset, into: data)
        ReplyEncoder.encodeReadReplyHeader(
            into: reply, cookie: header.cookie, offset: header.offset, length: header.length,
            structured: session.structuredReplies)
        send(UnsafeRawBufferPointer(reply))
    }

    private func write(_ header: RequestHeader, _ payload: [UInt8]) throws(BlockDeviceError) {
        var failure: BlockDeviceError?
        payload.withUnsafeBytes { raw in
            do throws(BlockDeviceError) {
                try device.write(at: header.offset, from: raw, fua: header.flags.contains(.fua))
            } catch {
                failure = error
            }
        }
        if let failure { throw failure }
    }

    private func sendCompletion(_ header: RequestHeader, error: NBDErrorCode?, message: String = "") {
        let bytes = ReplyEncoder.completion(
            cookie: header.cookie, error: error, message: message, command: header.command,
            structured: session.structuredReplies)
        bytes.withUnsafeBytes { send($0) }
    }

    /// Sends one whole reply. A failed send ends the connection: the socket
    /// is shut down, which also wakes the worker blocked reading.
    private func send(_ bytes: UnsafeRawBufferPointer) {
        let failure = writer.withLock { replies -> SocketError? in
            do throws(SocketError) {
                try socket.writeAll(bytes)
                replies += 1
                return nil
            } catch {
                return error
            }
        }
        if let failure {
            logger.debug("reply failed", metadata: ["error": "\(failure)"])
            socket.shutdown()
        }
    }
}
