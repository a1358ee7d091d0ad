import Foundation
import NBDProtocol
import Sockets
import Synchronization
import TestSupport

/// A hostile (or merely scripted) NBD server on a temporary Unix socket.
/// Each connection is handled on its own thread: the script either speaks
/// the handshake itself (`raw`), or gets a session after a correct
/// handshake done with ServerHandshake and then sends whatever it likes.
final class ScriptedServer: Sendable {
    enum Script: Sendable {
        case raw(@Sendable (Socket, Int) -> Void)
        case transmission(@Sendable (ScriptedSession) -> Void)
    }

    static let defaultExport = ExportDescription(
        name: "", size: 1 << 20, flags: [.sendFlush, .sendFUA, .sendTrim, .sendWriteZeroes],
        blockSize: BlockSizeConstraints(minimum: 1, preferred: 4096, maximum: NBDLimits.maxPayload))

    let directory: TemporaryDirectory
    let listener: Listener
    let export: ExportDescription
    private let script: Script
    private let sockets = Mutex<[Socket]>([])
    private let accepted = Atomic<Int>(0)

    var address: SocketAddress { listener.address }
    /// Connections accepted so far.
    var connectionCount: Int { accepted.load(ordering: .acquiring) }

    init(export: ExportDescription = ScriptedServer.defaultExport, _ script: Script) throws {
        directory = try TemporaryDirectory()
        listener = try Listener(binding: .unix(path: directory.file("sock")))
        self.export = export
        self.script = script
        Thread.detachNewThread { [self] in acceptLoop() }
    }

    convenience init(export: ExportDescription = ScriptedServer.defaultExport, _ body: @escaping @Sendable (ScriptedSession) -> Void) throws {
        try self.init(export: export, .transmission(body))
    }

    private func acceptLoop() {
        while let socket = try? listener.accept() {
            let index = accepted.wrappingAdd(1, ordering: .acquiringAndReleasing).oldValue
            // Nothing here may block a test forever.
            socket.setTimeout(seconds: 10)
            sockets.withLock { $0.append(socket) }
            Thread.detachNewThread { [self] in serve(socket, index: index) }
        }
    }

    private func serve(_ socket: Socket, index: Int) {
        defer { socket.shutdown() }
        switch script {
        case .raw(let body):
            body(socket, index)
        case .transmission(let body):
            guard let session = handshake(socket, index: index) else { return }
            body(session)
        }
    }

    private func handshake(_ socket: Socket, index: Int) -> ScriptedSession? {
        var handshake = ServerHandshake(catalog: ExportCatalog(exports: [export], defaultExportName: export.name))
        guard (try? socket.writeAll(handshake.greeting())) != nil else { return nil }
        var buffer = [UInt8](repeating: 0, count: 4096)
        while true {
            guard let count = try? buffer.withUnsafeMutableBytes({ try socket.read(into: $0) }), count > 0 else { return nil }
            for event in handshake.receive(buffer[0..<count]) {
                switch event {
                case .send(let bytes):
                    guard (try? socket.writeAll(bytes)) != nil else { return nil }
                case .transmission(let negotiated):
                    return ScriptedSession(socket: socket, negotiated: negotiated, leftover: handshake.takeLeftover(), index: index)
                case .close:
                    return nil
                }
            }
        }
    }

    /// Stops accepting, cuts every connection and removes the socket's directory.
    func close() {
        listener.close()
        for socket in sockets.withLock({ $0 }) { socket.shutdown() }
        directory.remove()
    }

    deinit { close() }
}

/// One connection of a `ScriptedServer` in the transmission phase.
final class ScriptedSession: @unchecked Sendable {
    // Used only by the thread serving this connection.
    let socket: Socket
    let negotiated: NegotiatedSession
    /// Which connection this is: 0 for the first.
    let index: Int
    private var decoder = RequestDecoder()
    /// Requests read by `anotherRequestArrives`, not yet taken.
    private var early: [IncomingRequest] = []

    init(socket: Socket, negotiated: NegotiatedSession, leftover: [UInt8], index: Int) {
        self.socket = socket
        self.negotiated = negotiated
        self.index = index
        decoder.receive(leftover)
    }

    var structured: Bool { negotiated.structuredReplies }

    /// The next request, or nil once the client has closed the connection
    /// (or sent something undecodable, or 10 s passed in silence).
    func nextRequest() -> IncomingRequest? {
        if !early.isEmpty { return early.removeFirst() }
        var buffer = [UInt8](repeating: 0, count: 64 * 1024)
        while true {
            if let request = try? decoder.next() { return request }
            guard let count = try? buffer.withUnsafeMutableBytes({ try socket.read(into: $0) }), count > 0 else { return nil }
            decoder.receive(buffer[0..<count])
        }
    }

    /// Whether the client sends another request within `seconds` (one
    /// already read counts); it is kept for `nextRequest`.
    func anotherRequestArrives(within seconds: Double) -> Bool {
        if !early.isEmpty { return true }
        if let request = try? decoder.next() {
            early.append(request)
            return true
        }
        socket.setTimeout(seconds: seconds)
        defer { socket.setTimeout(seconds: nil) }
        var buffer = [UInt8](repeating: 0, count: 64 * 1024)
        guard let count = try? buffer.withUnsafeMutableBytes({ try socket.read(into: $0) }), count > 0 else { return false }
        decoder.receive(buffer[0..<count])
        guard let request = try? decoder.next() else { return false }
        early.append(request)
        return true
    }

    /// Reads requests until the client hangs up; true if it did (rather than the read timing out).
    func waitForClientToHangUp() -> Bool {
        var buffer = [UInt8](repeating: 0, count: 64 * 1024)
        while true {
            do {
                let count = try buffer.withUnsafeMutableBytes { try socket.read(into: $0) }
                if count == 0 { return true }
            } catch SocketError.timedOut {
                return false
            } catch {
                return true
            }
        }
    }

    func send(_ bytes: [UInt8]) {
        try? socket.writeAll(bytes)
    }
}

/// Reply messages, correct and otherwise, built by hand.
enum Wire {
    static func simpleReply(cookie: UInt64, error: UInt32 = 0, magic: UInt32 = NBDMagic.simpleReply) -> [UInt8] {
        var bytes: [UInt8] = []
        bytes.appendBigEndian(magic)
        bytes.appendBigEndian(error)
        bytes.appendBigEndian(cookie)
        return bytes
    }

    static func chunk(cookie: UInt64, type: StructuredReplyType, done: Bool, payload: [UInt8], length: UInt32? = nil) -> [UInt8] {
        var bytes: [UInt8] = []
        bytes.appendBigEndian(NBDMagic.structuredReply)
        bytes.appendBigEndian(done ? ReplyFlags.done.rawValue : 0)
        bytes.appendBigEndian(type.rawValue)
        bytes.appendBigEndian(cookie)
        bytes.appendBigEndian(length ?? UInt32(payload.count))
        return bytes + payload
    }

    static func offsetData(cookie: UInt64, offset: UInt64, data: [UInt8], done: Bool) -> [UInt8] {
        var payload: [UInt8] = []
        payload.appendBigEndian(offset)
        return chunk(cookie: cookie, type: .offsetData, done: done, payload: payload + data)
    }

    static func offsetHole(cookie: UInt64, offset: UInt64, length: UInt32, done: Bool) -> [UInt8] {
        var payload: [UInt8] = []
        payload.appendBigEndian(offset)
        payload.appendBigEndian(length)
        return chunk(cookie: cookie, type: .offsetHole, done: done, payload: payload)
    }

    static func errorChunk(cookie: UInt64, error: NBDErrorCode, message: String, done: Bool = true) -> [UInt8] {
        var payload: [UInt8] = []
        payload.appendBigEndian(error.rawValue)
        payload.appendBigEndian(UInt16(message.utf8.count))
        payload.append(contentsOf: message.utf8)
        return chunk(cookie: cookie, type: .error, done: done, payload: payload)
    }
}

extension ScriptedSession {
    /// Answers like an honest server whose every byte is `fill`.
    func answer(_ request: IncomingRequest, fill: UInt8 = 0) {
        let header = request.header
        if header.command == .read, structured {
            send(Wire.offsetData(cookie: header.cookie, offset: header.offset, data: [UInt8](repeating: fill, count: Int(header.length)), done: true))
        } else if header.command == .read {
            send(Wire.simpleReply(cookie: header.cookie) + [UInt8](repeating: fill, count: Int(header.length)))
        } else {
            send(ReplyEncoder.completion(cookie: header.cookie, error: nil, command: header.command, structured: structured))
        }
    }

    /// Answers every request honestly until the client hangs up.
    func serveHonestly(fill: UInt8 = 0) {
        while let request = nextRequest() {
            if request.header.command == .disconnect { return }
            answer(request, fill: fill)
        }
    }
}
