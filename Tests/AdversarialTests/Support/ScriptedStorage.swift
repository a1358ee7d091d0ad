import BlockDevice
import NBDProtocol
import Sockets
import TestSupport
import Threads

/// How the scripted storage domain breaks its READ replies on the wire.
enum WireFault: Sendable, Equatable, CustomStringConvertible {
    case none
    /// Half the data, announced as the whole reply (structured: a final
    /// chunk that leaves half the request uncovered).
    case shortReply
    /// More data than the request asked for.
    case oversizedReply
    /// The correct reply, sent twice.
    case duplicatedReply
    /// A reply to a cookie the client never sent, before the real one.
    case unsolicitedReply
    /// The reply header and half the data, then the connection closes.
    case closeMidReply
    /// A structured data chunk at an offset outside the request.
    case misplacedChunk
    /// Random bytes instead of a reply.
    case garbage
    /// No reply at all; the connection stays open.
    case silence
    /// NBD_EIO with a message (a structured error chunk): the honest way to fail.
    case errorReply

    var description: String {
        switch self {
        case .none: "none"
        case .shortReply: "short reply"
        case .oversizedReply: "oversized reply"
        case .duplicatedReply: "duplicated reply"
        case .unsolicitedReply: "unsolicited reply"
        case .closeMidReply: "close mid-reply"
        case .misplacedChunk: "chunk outside the request"
        case .garbage: "garbage instead of a reply"
        case .silence: "silence"
        case .errorReply: "EIO error reply"
        }
    }
}

/// A storage domain written by hand at the wire level: a correct handshake
/// (ServerHandshake), requests decoded with RequestDecoder and served from
/// a memory device, and replies to the armed commands (READ by default)
/// broken on purpose by `fault`, for `budget` replies (then honest again).
final class ScriptedStorage: Sendable {
    private struct State {
        var fault: WireFault = .none
        var commands: Set<Command> = [.read]
        var budget = 0
        var injected = 0
        var connections = 0
        var sockets: [Socket] = []
        var closed = false
    }

    let directory: TemporaryDirectory
    let device: MemoryBlockDevice
    let address: SocketAddress
    private let listener: Listener
    private let catalog: ExportCatalog
    private let state = Guarded(State())

    init(serving device: MemoryBlockDevice) throws {
        directory = try TemporaryDirectory("wire")
        self.device = device
        address = .unix(path: directory.file("storage.sock"))
        listener = try Listener(binding: address)
        let export = ExportDescription(
            name: "pool", description: "", size: device.size, flags: [.sendFlush, .sendFUA, .sendTrim, .sendWriteZeroes],
            blockSize: BlockSizeConstraints(minimum: 1, preferred: 4096, maximum: NBDLimits.maxPayload))
        catalog = ExportCatalog(exports: [export], defaultExportName: "pool")
        startThread { [self] in acceptLoop() }
    }

    /// Breaks the next `budget` replies to `commands` with `fault`.
    func arm(_ fault: WireFault, budget: Int = 1, commands: Set<Command> = [.read]) {
        state.update { state in
            state.fault = fault
            state.budget = budget
            state.commands = commands
        }
    }

    var injected: Int { state.withLock { $0.injected } }
    var connections: Int { state.withLock { $0.connections } }

    func close() {
        let sockets = state.update { state -> [Socket] in
            state.closed = true
            return state.sockets
        }
        listener.close()
        for socket in sockets { socket.shutdown() }
    }

    deinit { close() }

    private func acceptLoop() {
        while let socket = try? listener.accept() {
            let accepted = state.update { state -> Bool in
                guard !state.closed else { return false }
                state.connections += 1
                state.sockets.append(socket)
                return true
            }
            guard accepted else { return }
            // Nothing here may block a test forever.
            socket.setTimeout(seconds: 10)
            startThread { [self] in serve(socket) }
        }
    }

    private func serve(_ socket: Socket) {
        defer { socket.shutdown() }
        var handshake = ServerHandshake(catalog: catalog)
        guard (try? socket.writeAll(handshake.greeting())) != nil else { return }
        var buffer = [UInt8](repeating: 0, count: 256 * 1024)
        var session: NegotiatedSession?
        while session == nil {
            guard let count = try? buffer.withUnsafeMutableBytes({ try socket.read(into: $0) }), count > 0 else { return }
            for event in handshake.receive(buffer[0..<count]) {
                switch event {
                case .send(let bytes): guard (try? socket.writeAll(bytes)) != nil else { return }
                case .transmission(let negotiated): session = negotiated
                case .close: return
                }
            }
        }
        var decoder = RequestDecoder()
        decoder.receive(handshake.takeLeftover())
        while true {
            let request: IncomingRequest
            do {
                if let next = try decoder.next() {
                    request = next
                } else {
                    let count = try buffer.withUnsafeMutableBytes { try socket.read(into: $0) }
                    guard count > 0 else { return }
                    decoder.receive(buffer[0..<count])
                    continue
                }
            } catch {
                return
            }
            guard request.header.command != .disconnect else { return }
            guard answer(request, structured: session!.structuredReplies, on: socket) else { return }
        }
    }

    /// Serves one request; false once the connection should end.
    private func answer(_ request: IncomingRequest, structured: Bool, on socket: Socket) -> Bool {
        let header = request.header
        let fault = state.update { state -> WireFault in
            guard state.budget > 0, state.fault != .none, state.commands.contains(header.command) else { return .none }
            state.budget -= 1
            state.injected += 1
            return state.fault
        }
        var failed = false
        switch header.command {
        case .read:
            let data: [UInt8]
            do { data = try device.readBytes(at: header.offset, count: Int(header.length)) } catch {
                return send(ReplyEncoder.completion(cookie: header.cookie, error: .ioError, command: .read, structured: structured), socket)
            }
            return sendRead(header, data, structured: structured, fault: fault, on: socket)
        case .write:
            do { try device.writeBytes(at: header.offset, Array(request.payload)) } catch { failed = true }
        case .trim, .writeZeroes:
            do { try device.writeZeroes(at: header.offset, length: UInt64(header.length), flags: []) } catch { failed = true }
        default:
            break
        }
        let honest = ReplyEncoder.completion(
            cookie: header.cookie, error: failed ? .ioError : nil, command: header.command, structured: structured)
        switch fault {
        case .none, .misplacedChunk:
            return send(honest, socket)
        case .shortReply:
            return send(Array(honest.prefix(honest.count / 2)), socket)
        case .oversizedReply:
            return send(honest + [UInt8](repeating: 0x5A, count: 64), socket)
        case .duplicatedReply:
            return send(honest + honest, socket)
        case .unsolicitedReply:
            return send(
                ReplyEncoder.completion(cookie: header.cookie &+ 0x5EED, error: nil, command: header.command, structured: structured)
                    + honest, socket)
        case .closeMidReply:
            _ = send(Array(honest.prefix(honest.count / 2)), socket)
            return false
        case .garbage:
            var random = SeededGenerator(seed: header.cookie)
            return send(random.bytes(honest.count), socket)
        case .silence:
            return true
        case .errorReply:
            return send(
                ReplyEncoder.completion(
                    cookie: header.cookie, error: .ioError, message: "hostile storage says no", command: header.command,
                    structured: structured), socket)
        }
    }

    private func sendRead(_ header: RequestHeader, _ data: [UInt8], structured: Bool, fault: WireFault, on socket: Socket) -> Bool {
        let honest = readReply(header.cookie, offset: header.offset, data, structured: structured)
        switch fault {
        case .none:
            return send(honest, socket)
        case .shortReply:
            return send(readReply(header.cookie, offset: header.offset, Array(data.prefix(data.count / 2)), structured: structured), socket)
        case .oversizedReply:
            return send(readReply(header.cookie, offset: header.offset, data + [UInt8](repeating: 0x5A, count: 512), structured: structured), socket)
        case .duplicatedReply:
            return send(honest + honest, socket)
        case .unsolicitedReply:
            return send(readReply(header.cookie &+ 0x5EED, offset: header.offset, data, structured: structured) + honest, socket)
        case .closeMidReply:
            _ = send(Array(honest.prefix(honest.count / 2)), socket)
            return false
        case .misplacedChunk:
            return send(readReply(header.cookie, offset: header.offset + UInt64(data.count) + 4096, data, structured: true), socket)
        case .garbage:
            var random = SeededGenerator(seed: header.cookie)
            return send(random.bytes(honest.count), socket)
        case .silence:
            return true
        case .errorReply:
            return send(
                ReplyEncoder.completion(
                    cookie: header.cookie, error: .ioError, message: String(repeating: "hostile storage says no. ", count: 100),
                    command: .read, structured: structured), socket)
        }
    }

    /// A READ reply carrying `data` from export offset `offset`: one
    /// NBD_REPLY_TYPE_OFFSET_DATA chunk, or a simple reply.
    private func readReply(_ cookie: UInt64, offset: UInt64, _ data: [UInt8], structured: Bool) -> [UInt8] {
        var bytes: [UInt8] = []
        if structured {
            bytes.appendBigEndian(NBDMagic.structuredReply)
            bytes.appendBigEndian(ReplyFlags.done.rawValue)
            bytes.appendBigEndian(StructuredReplyType.offsetData.rawValue)
            bytes.appendBigEndian(cookie)
            bytes.appendBigEndian(UInt32(data.count + 8))
            bytes.appendBigEndian(offset)
        } else {
            bytes.appendBigEndian(NBDMagic.simpleReply)
            bytes.appendBigEndian(UInt32(0))
            bytes.appendBigEndian(cookie)
        }
        return bytes + data
    }

    private func send(_ bytes: [UInt8], _ socket: Socket) -> Bool {
        (try? socket.writeAll(bytes)) != nil
    }
}
