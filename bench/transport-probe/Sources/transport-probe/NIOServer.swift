import NBDProtocol
import NIOCore
import NIOPosix

/// SwiftNIO: a ServerBootstrap on one event loop per core. The handler feeds
/// inbound bytes to the same handshake and request decoder as the POSIX
/// server. With `pool` nil every request is carried out inline on the event
/// loop (the best case for NIO, right only when storage never blocks); with
/// a pool, each request hops to a NIOThreadPool thread and its reply hops
/// back (what blocking pread/pwrite/fdatasync require).
func runNIOServer(socketPath: String, export: Export, poolThreads: Int?, readSize: Int) throws -> Never {
    let group = MultiThreadedEventLoopGroup(numberOfThreads: System.coreCount)
    let pool: NIOThreadPool? = poolThreads.map { NIOThreadPool(numberOfThreads: $0) }
    pool?.start()
    let catalog = ExportCatalog(exports: [export.description], defaultExportName: "probe")
    let channel = try ServerBootstrap(group: group)
        .serverChannelOption(.backlog, value: 64)
        .childChannelOption(.recvAllocator, value: AdaptiveRecvByteBufferAllocator(
            minimum: 4096, initial: 65536, maximum: readSize))
        .childChannelOption(.maxMessagesPerRead, value: 16)
        .childChannelInitializer { channel in
            channel.eventLoop.makeCompletedFuture {
                try channel.pipeline.syncOperations.addHandler(
                    NBDHandler(catalog: catalog, export: export, pool: pool))
            }
        }
        .bind(unixDomainSocketPath: socketPath, cleanupExistingSocketFile: true)
        .wait()
    try channel.closeFuture.wait()
    fatalError("listener closed")
}

final class NBDHandler: ChannelInboundHandler {
    typealias InboundIn = ByteBuffer
    typealias OutboundOut = ByteBuffer

    private var handshake: ServerHandshake?
    private var session: NegotiatedSession?
    private var decoder = RequestDecoder()
    private let export: Export
    private let pool: NIOThreadPool?
    private var inFlight = 0
    private var disconnecting = false
    private var flushScheduled = false

    init(catalog: ExportCatalog, export: Export, pool: NIOThreadPool?) {
        handshake = ServerHandshake(catalog: catalog)
        self.export = export
        self.pool = pool
    }

    func channelActive(context: ChannelHandlerContext) {
        if let greeting = handshake?.greeting() { send(context, greeting) }
        context.flush()
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        let buffer = unwrapInboundIn(data)
        if session != nil {
            buffer.withUnsafeReadableBytes { decoder.receive($0) }
            drain(context)
            return
        }
        guard var current = handshake else { return }
        let events = current.receive(buffer.readableBytesView)
        handshake = current
        for event in events {
            switch event {
            case .send(let bytes):
                send(context, bytes)
            case .transmission(let negotiated):
                session = negotiated
                decoder.receive(current.takeLeftover())
                handshake = nil
                drain(context)
            case .close:
                context.flush()
                context.close(promise: nil)
            }
        }
    }

    func channelReadComplete(context: ChannelHandlerContext) {
        context.flush()
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        context.close(promise: nil)
    }

    private func send(_ context: ChannelHandlerContext, _ bytes: [UInt8]) {
        context.write(wrapOutboundOut(context.channel.allocator.buffer(bytes: bytes)), promise: nil)
    }

    /// Carries out every request decoded so far.
    private func drain(_ context: ChannelHandlerContext) {
        guard let session, !disconnecting else { return }
        while true {
            let request: IncomingRequest?
            do {
                request = try decoder.next()
            } catch {
                context.close(promise: nil)
                return
            }
            guard let request else { return }
            if let pool {
                offload(request, session: session, pool: pool, context: context)
            } else {
                inline(request, session: session, context: context)
            }
            if disconnecting { return }
        }
    }

    private func inline(_ request: IncomingRequest, session: NegotiatedSession, context: ChannelHandlerContext) {
        switch perform(request, session: session, export: export) {
        case .disconnect:
            disconnecting = true
            context.flush()
            context.close(promise: nil)
        case .reply(let bytes):
            send(context, bytes)
        case .read(let cookie, let offset, let length):
            context.write(wrapOutboundOut(readReply(
                allocator: context.channel.allocator, cookie: cookie, offset: offset, length: length,
                structured: session.structuredReplies, export: export)), promise: nil)
        }
    }

    private func offload(
        _ request: IncomingRequest, session: NegotiatedSession, pool: NIOThreadPool, context: ChannelHandlerContext
    ) {
        if request.header.command == .disconnect {
            disconnecting = true
            closeIfDone(context)
            return
        }
        inFlight += 1
        let export = export
        let allocator = context.channel.allocator
        pool.runIfActive(eventLoop: context.eventLoop) { () -> ByteBuffer in
            switch perform(request, session: session, export: export) {
            case .disconnect:
                return allocator.buffer(capacity: 0)
            case .reply(let bytes):
                return allocator.buffer(bytes: bytes)
            case .read(let cookie, let offset, let length):
                return readReply(
                    allocator: allocator, cookie: cookie, offset: offset, length: length,
                    structured: session.structuredReplies, export: export)
            }
        }.assumeIsolated().whenComplete { result in
            self.inFlight -= 1
            if case .success(let reply) = result {
                context.write(self.wrapOutboundOut(reply), promise: nil)
            }
            self.scheduleFlush(context)
            self.closeIfDone(context)
        }
    }

    /// Completions that land in the same event-loop tick share one flush.
    private func scheduleFlush(_ context: ChannelHandlerContext) {
        guard !flushScheduled else { return }
        flushScheduled = true
        context.eventLoop.assumeIsolated().execute {
            self.flushScheduled = false
            context.flush()
        }
    }

    private func closeIfDone(_ context: ChannelHandlerContext) {
        guard disconnecting, inFlight == 0 else { return }
        context.flush()
        context.close(promise: nil)
    }
}

/// A READ reply in one buffer: header, then the data read straight after it.
private func readReply(
    allocator: ByteBufferAllocator, cookie: UInt64, offset: UInt64, length: Int, structured: Bool, export: Export
) -> ByteBuffer {
    let total = ReplyEncoder.readReplyHeaderLength(structured: structured) + length
    var buffer = allocator.buffer(capacity: total)
    var ok = true
    buffer.writeWithUnsafeMutableBytes(minimumWritableBytes: total) { raw in
        ok = fillReadReply(
            UnsafeMutableRawBufferPointer(rebasing: raw[..<total]), cookie: cookie, offset: offset,
            structured: structured, export: export)
        return total
    }
    guard ok else { return allocator.buffer(bytes: readFailure(cookie: cookie, structured: structured)) }
    return buffer
}
