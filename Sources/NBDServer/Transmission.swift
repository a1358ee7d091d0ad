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
/// The connection's thread reads and decodes requests, reading large
/// chunks so that one system call picks up many pipelined requests. READs
/// and WRITEs of an `AsynchronousBlockDevice` are started on the spot and
/// answered from the device's completion, so a request costs no thread
/// hand-off; everything else (FLUSH, TRIM, WRITE_ZEROES, requests the
/// device cannot start without blocking) goes to worker threads, started
/// as needed up to `workersPerConnection`. Replies go out whole, in
/// whatever order requests complete, through a `ReplyChannel`.
final class Transmission: Sendable {
    /// Requests taken from the client and not yet answered: bounded, so a
    /// client that pipelines without reading replies stops being read.
    private struct Flight {
        var requests = 0
        var payloadBytes = 0
        /// READ reply buffers not in use, most recently used last: kept
        /// under the flight's lock, so a READ answered from its buffer gives
        /// both back with one lock (`finished(_:returning:)`).
        var replyBuffers: [ReplyBuffer] = []
    }

    /// What a worker does with a request.
    private enum Job {
        /// Executes it synchronously (`perform`).
        case perform(IncomingRequest)
        /// Starts a large WRITE on the asynchronous device, which answers
        /// it from its completion; `perform` if it cannot start.
        case start(IncomingRequest)
    }

    /// Payload still to come above which a WRITE's payload is read from
    /// the socket straight into its buffer: one copy fewer for large writes,
    /// while small ones keep arriving many to a read.
    static let directPayloadThreshold = 64 * 1024
    /// Requests in flight per connection. The NBD client decides its own
    /// queue depth (qemu and the Linux driver use up to 128, fio its
    /// iodepth); beyond this the server stops reading until replies go out.
    static let maxRequestsInFlight = 256
    /// READ and WRITE payload bytes held per connection before reading
    /// pauses: with 32 MiB payloads allowed, the request count alone would
    /// admit 8 GiB.
    static let maxPayloadBytesInFlight = 64 << 20
    /// READs from this size up go out with sendfile(2) where the device
    /// allows (`SplicingBlockDevice`), from a worker thread. On this
    /// machine's kernel (6.18, Unix sockets), sending 64 KiB that way cost
    /// the server 5.3 µs against 31 µs for pread and send (1 MiB: 95
    /// against 488 µs), and the client 10% more to receive it; the hand-off
    /// to a worker costs a few µs. Smaller replies are read on the
    /// connection's thread and gathered with the others of their batch
    /// into one send, which sendfile cannot join.
    static let spliceThreshold = 64 * 1024
    /// WRITEs from this size up are started on an asynchronous device by a
    /// worker, not by the thread reading requests: sealing and sending
    /// 1 MiB to the storage domain took the crypt domain's reading thread
    /// about as long as receiving it, so the next payload waited for both.
    /// Handed off, the next payload is read while this one is sealed; the
    /// hand-off (a few µs) is nothing next to the payload's own cost.
    static let writeHandOffThreshold = 256 * 1024

    private let connection: Connection
    private let session: NegotiatedSession
    private let device: any BlockDevice
    private let asynchronous: (any AsynchronousBlockDevice)?
    private let splicing: (any SplicingBlockDevice)?
    /// Carries large WRITE payloads from the socket into the device's file
    /// (`spliceWrite`); nil unless the device takes spliced writes.
    private let splicePipe: SplicePipe?
    private let replies: ReplyChannel
    private let flight = Guarded(Flight())
    /// The connection's worker threads (`HandOff`), started as needed up
    /// to `workersPerConnection`.
    private let workers: HandOff
    private let leftover: [UInt8]

    init(connection: Connection, session: NegotiatedSession, device: any BlockDevice, leftover: [UInt8]) {
        self.connection = connection
        self.session = session
        self.device = device
        self.asynchronous = device as? any AsynchronousBlockDevice
        self.splicing = device as? any SplicingBlockDevice
        // Without a pipe (out of descriptors), payloads are read as usual.
        self.splicePipe = splicing?.splicesWrites == true ? try? SplicePipe() : nil
        self.leftover = leftover
        workers = HandOff(
            threads: connection.server.configuration.workersPerConnection,
            stackSize: connection.server.configuration.threadStackSize)
        replies = ReplyChannel(
            socket: connection.socket, logger: connection.logger, stackSize: connection.server.configuration.threadStackSize)
    }

    private var logger: Logger { connection.logger }
    private var socket: Socket { connection.socket }
    private var configuration: NBDServerConfiguration { connection.server.configuration }

    /// Serves requests until the connection ends, then waits for every
    /// request in flight to be answered and closes the connection.
    func run() {
        readRequests()
        workers.close()
        _ = flight.wait(until: { $0.requests == 0 }) { _ in () }
        workers.waitUntilStopped()
        replies.drain(timeout: configuration.replyTimeout)
        logger.debug("transmission ended", metadata: ["replies": "\(replies.count)"])
        connection.end()
    }

    // MARK: Reading

    private func readRequests() {
        var decoder = RequestDecoder(
            maxPayload: session.export.blockSize.maximum, payloadAlignment: Self.payloadAlignment(for: device),
            payloadMemory: configuration.payloadMemory)
        decoder.receive(leftover)
        while true {
            switch dispatchDecoded(&decoder) {
            case .stop:
                return
            case .readMore:
                guard read(into: &decoder) else { return }
            case .admitAndDispatch(let request):
                admit(request)
                dispatch(request)
            }
        }
    }

    /// WRITE payload alignment: the device's minimum block size if it is a
    /// power of two up to a page, so that an O_DIRECT file writes from the
    /// payload without a bounce buffer; otherwise a cache line.
    static func payloadAlignment(for device: any BlockDevice) -> Int {
        let size = Int(device.minimumBlockSize)
        guard size > 64, size <= 4096, size & (size - 1) == 0 else { return 64 }
        return size
    }

    private enum Step {
        case stop
        case readMore
        /// No room in the flight for this request without waiting.
        case admitAndDispatch(IncomingRequest)
    }

    /// Dispatches every request decodable from what has been read, in one
    /// send batch, so that the storage requests and inline replies they
    /// make leave together. Waiting is done outside the batch, whose sends
    /// would otherwise be held back.
    private func dispatchDecoded(_ decoder: inout RequestDecoder) -> Step {
        SendBatch.run {
            while true {
                let request: IncomingRequest
                do throws(NBDProtocolError) {
                    guard let next = try decoder.next() else { return .readMore }
                    request = next
                } catch {
                    logger.warning("closing: protocol error", metadata: ["error": "\(error)"])
                    return .stop
                }
                guard request.header.command != .disconnect else {
                    logger.debug("client sent NBD_CMD_DISC")
                    return .stop
                }
                guard tryAdmit(request) else { return .admitAndDispatch(request) }
                dispatch(request)
            }
        }
    }

    /// Reads more of the request stream into the decoder; false once the
    /// connection is to end. A request whose large WRITE payload is mostly
    /// still to come is completed by reading straight into its buffer.
    private func read(into decoder: inout RequestDecoder) -> Bool {
        do throws(SocketError) {
            if decoder.missingPayloadCount >= Self.directPayloadThreshold {
                if let pipe = splicePipe, let header = decoder.pendingWrite, let range = splicedWriteRange(header) {
                    try spliceWrite(header, &decoder, into: range, through: pipe)
                    return true
                }
                let request = try decoder.completePendingWrite { buffer throws(SocketError) in
                    try socket.readExactly(into: buffer)
                }
                admit(request)
                dispatch(request)
                return true
            }
            // Straight into the decoder's input: no copy through a buffer of our own.
            let count = try decoder.receive(upTo: configuration.readChunkSize) { room throws(SocketError) in try socket.read(into: room) }
            guard count > 0 else {
                logger.debug("end of the request stream")
                return false
            }
            return true
        } catch {
            logger.debug("read failed", metadata: ["error": "\(error)"])
            return false
        }
    }

    /// Where a WRITE whose payload is still arriving may be spliced into
    /// the device's file: a valid request without FUA on a device that
    /// takes spliced writes. Anything else (an invalid request's error
    /// reply too) goes the ordinary way.
    private func splicedWriteRange(_ header: RequestHeader) -> FileRange? {
        guard let splicing, !header.flags.contains(.fua),
            validate(header, payloadDiscarded: false, session: session) == nil
        else { return nil }
        return splicing.splicedWriteRange(at: header.offset, count: Int(header.length))
    }

    /// NBD_CMD_WRITE without payload memory: the payload bytes already read
    /// are written from the decoder's input, the rest go from the socket
    /// into the file through `pipe` (splice(2)), here on the thread reading
    /// requests: the device said its writes never wait for a disk, and the
    /// next request lies behind this payload anyway. A device error still
    /// takes the whole payload off the stream, then answers the error.
    private func spliceWrite(
        _ header: RequestHeader, _ decoder: inout RequestDecoder, into range: FileRange, through pipe: SplicePipe
    ) throws(SocketError) {
        // As `admit` does for every other request: a client that sends
        // WRITEs without reading their replies stops being read, rather
        // than having the replies pile up here.
        replies.waitForRoom(limit: Self.maxPayloadBytesInFlight)
        let missing = decoder.missingPayloadCount
        var failure: BlockDeviceError?
        var buffered = 0
        decoder.takePendingWrite { _, bytes in
            buffered = bytes.count
            do throws(BlockDeviceError) { try device.write(at: header.offset, from: bytes, fua: false) } catch { failure = error }
        }
        let position = range.offset + Int64(buffered)
        if failure != nil {
            try pipe.skip(missing, from: socket)
        } else {
            let code = try pipe.move(missing, from: socket, into: range.descriptor, at: position)
            if code != 0 { failure = .io(operation: "splice into the export at \(position)+\(missing)", errno: code) }
        }
        if let failure {
            sendFailure(header, failure)
        } else {
            sendCompletion(header, error: nil)
        }
    }

    /// Waits for room in the flight, and for the replies of a client that
    /// reads them slowly to drain; the first request always gets in.
    private func admit(_ request: IncomingRequest) {
        replies.waitForRoom(limit: Self.maxPayloadBytesInFlight)
        let bytes = Self.payloadBytes(request)
        _ = flight.wait(until: { Self.hasRoom(for: bytes, in: $0) }) { flight in
            flight.requests += 1
            flight.payloadBytes += bytes
        }
    }

    /// `admit` without waiting: false if it would have to.
    private func tryAdmit(_ request: IncomingRequest) -> Bool {
        guard replies.hasRoom(limit: Self.maxPayloadBytesInFlight) else { return false }
        let bytes = Self.payloadBytes(request)
        return flight.withLock { flight in
            guard Self.hasRoom(for: bytes, in: flight) else { return false }
            flight.requests += 1
            flight.payloadBytes += bytes
            return true
        }
    }

    private static func hasRoom(for bytes: Int, in flight: Flight) -> Bool {
        flight.requests == 0
            || (flight.requests < maxRequestsInFlight && flight.payloadBytes + bytes <= maxPayloadBytesInFlight)
    }

    /// The memory a request holds while in flight: its WRITE payload or
    /// its READ reply.
    private static func payloadBytes(_ request: IncomingRequest) -> Int {
        request.header.command == .read ? Int(request.header.length) : request.payload.count
    }

    /// Called once per request after its reply is handed to the channel;
    /// with `replyBuffer`, the READ's buffer the reply no longer needs.
    private func finished(_ request: IncomingRequest, returning replyBuffer: ReplyBuffer? = nil) {
        let bytes = Self.payloadBytes(request)
        replyBuffer?.trim()
        flight.update { flight in
            flight.requests -= 1
            flight.payloadBytes -= bytes
            if let replyBuffer { flight.replyBuffers.append(replyBuffer) }
        }
    }

    // MARK: Dispatching

    private func dispatch(_ request: IncomingRequest) {
        let header = request.header
        if let error = validate(header, payloadDiscarded: request.payloadDiscarded, session: session) {
            logger.debug("refused request", metadata: ["command": "\(header.command)", "error": "\(error)"])
            sendCompletion(header, error: error, message: rejectionMessage(header, error, session.export))
            finished(request)
            return
        }
        if header.command == .read, Int(header.length) >= Self.spliceThreshold, splicing != nil {
            // To a worker, which splices it if the device allows (`read`):
            // the send blocks until the client takes the data, and this
            // thread must go on reading requests (a client may send a
            // WRITE's payload before it reads any reply). A range the device
            // will not splice is one that might wait for the disk, which
            // belongs on a worker too.
            enqueue(.perform(request))
            return
        }
        if header.command == .flush, let asynchronous, asynchronous.flushesAtOnce {
            // Nothing to wait for: answered here rather than by a worker.
            perform(request)
            return
        }
        if let asynchronous, header.length > 0 {
            switch header.command {
            case .read: if startRead(request, on: asynchronous) { return }
            case .write:
                if Int(header.length) >= Self.writeHandOffThreshold {
                    enqueue(.start(request))
                    return
                }
                if startWrite(request, on: asynchronous) { return }
            default: break
            }
        }
        enqueue(.perform(request))
    }

    private func startRead(_ request: IncomingRequest, on device: any AsynchronousBlockDevice) -> Bool {
        let header = request.header
        let replyBuffer = takeReplyBuffer()
        let headerLength = ReplyEncoder.readReplyHeaderLength(structured: session.structuredReplies)
        guard let (_, data) = replyBuffer.prepare(headerLength: headerLength, dataLength: Int(header.length)) else {
            returnReplyBuffer(replyBuffer)
            return false
        }
        let started = device.startRead(at: header.offset, into: data) { outcome in
            switch outcome {
            case .done:
                let reply = replyBuffer.reply
                ReplyEncoder.encodeReadReplyHeader(
                    into: reply, cookie: header.cookie, offset: header.offset, length: header.length,
                    structured: self.session.structuredReplies)
                let bytes = UnsafeRawBufferPointer(reply)
                if self.replies.gather(bytes) {
                    self.finished(request, returning: replyBuffer)
                } else {
                    // Lent, not copied, if the client is slow to take it.
                    self.replies.send(bytes) { self.returnReplyBuffer(replyBuffer) }
                    self.finished(request)
                }
                return
            case .failed(let error):
                self.sendFailure(header, error)
            case .redoSynchronously:
                self.returnReplyBuffer(replyBuffer)
                self.enqueue(.perform(request))
                return
            }
            self.finished(request, returning: replyBuffer)
        }
        if !started { returnReplyBuffer(replyBuffer) }
        return started
    }

    /// NBD_CMD_READ answered from the page cache: the reply header, then
    /// the data straight from the device's file (`ReplyChannel.sendSpliced`).
    private func spliceRead(_ header: RequestHeader, from device: any SplicingBlockDevice) -> Bool {
        guard let range = device.splicedRange(at: header.offset, count: Int(header.length)) else { return false }
        let structured = session.structuredReplies
        var space = (UInt64(0), UInt64(0), UInt64(0), UInt64(0))
        withUnsafeMutableBytes(of: &space) { buffer in
            let reply = UnsafeMutableRawBufferPointer(rebasing: buffer[..<ReplyEncoder.readReplyHeaderLength(structured: structured)])
            ReplyEncoder.encodeReadReplyHeader(
                into: reply, cookie: header.cookie, offset: header.offset, length: header.length, structured: structured)
            replies.sendSpliced(header: UnsafeRawBufferPointer(reply), data: range)
        }
        return true
    }

    private func startWrite(_ request: IncomingRequest, on device: any AsynchronousBlockDevice) -> Bool {
        let header = request.header
        // SAFETY: a WritePayload's memory stays at one address, unchanged,
        // until the payload is freed; the completion holds the payload
        // (through `request`) until the device calls it, done with the bytes.
        let bytes = request.payload.unsafeBytes
        return device.startWrite(at: header.offset, from: bytes, fua: header.flags.contains(.fua)) { outcome in
            switch outcome {
            case .done:
                self.sendCompletion(header, error: nil)
            case .failed(let error):
                self.sendFailure(header, error)
            case .redoSynchronously:
                self.enqueue(.perform(request))
                return
            }
            self.finished(request)
        }
    }

    private func takeReplyBuffer() -> ReplyBuffer {
        // The buffer used last is the one most likely still in the CPU cache.
        flight.withLock { $0.replyBuffers.popLast() } ?? ReplyBuffer(alignment: Int(device.minimumBlockSize))
    }

    private func returnReplyBuffer(_ buffer: ReplyBuffer) {
        buffer.trim()
        flight.withLock { $0.replyBuffers.append(buffer) }
    }

    // MARK: Workers

    /// Hands a request to a worker thread, starting one if the idle ones
    /// are too few for the requests waiting.
    private func enqueue(_ job: Job) {
        let error = workers.run { self.run(job) }
        if error != 0 { logger.warning("cannot start a worker thread", metadata: ["errno": "\(error)"]) }
    }

    private func run(_ job: Job) {
        switch job {
        case .perform(let request):
            perform(request)
        case .start(let request):
            // A device that would block takes the synchronous path here.
            if let asynchronous, startWrite(request, on: asynchronous) { return }
            perform(request)
        }
    }

    /// Executes a request synchronously and answers it.
    private func perform(_ request: IncomingRequest) {
        defer { finished(request) }
        let header = request.header
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
            sendFailure(header, error)
        }
    }

    /// NBD_CMD_READ: spliced from the page cache where the device allows;
    /// otherwise the device reads straight into the reply buffer, behind
    /// the reply header, and the whole reply goes out in one send.
    private func read(_ header: RequestHeader) throws(BlockDeviceError) {
        if Int(header.length) >= Self.spliceThreshold, let splicing, spliceRead(header, from: splicing) { return }
        let replyBuffer = takeReplyBuffer()
        defer { returnReplyBuffer(replyBuffer) }
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
        replies.send(UnsafeRawBufferPointer(reply))
    }

    private func write(_ header: RequestHeader, _ payload: WritePayload) throws(BlockDeviceError) {
        try payload.withUnsafeBytes { (raw) throws(BlockDeviceError) in
            try device.write(at: header.offset, from: raw, fua: header.flags.contains(.fua))
        }
    }

    // MARK: Replies

    private func sendFailure(_ header: RequestHeader, _ error: BlockDeviceError) {
        let code = error.nbdError(for: header.command)
        if error.isStorageFailure {
            logger.error("\(header.command) failed", metadata: ["error": "\(error)", "reply": "\(code)"])
        } else {
            logger.debug("\(header.command) failed", metadata: ["error": "\(error)", "reply": "\(code)"])
        }
        sendCompletion(header, error: code, message: error.description)
    }

    private func sendCompletion(_ header: RequestHeader, error: NBDErrorCode?, message: String = "") {
        guard error != nil else {
            // The reply of every successful WRITE: encoded on the stack, no array.
            let structured = session.structuredReplies
            let length = ReplyEncoder.successLength(command: header.command, structured: structured)
            var space = (UInt64(0), UInt64(0), UInt64(0))
            withUnsafeMutableBytes(of: &space) { buffer in
                ReplyEncoder.encodeSuccess(into: buffer, cookie: header.cookie, command: header.command, structured: structured)
                replies.send(UnsafeRawBufferPointer(rebasing: buffer[..<length]))
            }
            return
        }
        let bytes = ReplyEncoder.completion(
            cookie: header.cookie, error: error, message: message, command: header.command,
            structured: session.structuredReplies)
        bytes.withUnsafeBytes { replies.send($0) }
    }
}
