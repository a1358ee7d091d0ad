import Glibc
import NBDProtocol
import Sockets
import Testing

/// What went wrong in the test client.
struct ClientFailure: Error, CustomStringConvertible {
    var description: String
    init(_ description: String) { self.description = description }
}

/// Seconds any test read may block before the test fails instead of hanging.
let testIOTimeout = 20.0

/// An NBD client driven byte by byte: the handshake comes from
/// `ClientHandshake`, requests are hand-built, and replies are checked by
/// `ReplyDecoder`, so a test can send exactly the bytes it wants.
final class RawClient {
    let socket: Socket
    private(set) var session: ClientSession?
    private var decoder: ReplyDecoder?
    private var pendingInput: [UInt8] = []
    private var nextCookie: UInt64 = 1

    init(connectingTo address: SocketAddress) throws {
        socket = try Socket.connect(to: address)
        socket.setTimeout(seconds: testIOTimeout)
    }

    /// Connects and negotiates `export` with NBD_OPT_GO.
    convenience init(_ address: SocketAddress, export: String, structured: Bool = true) throws {
        try self.init(connectingTo: address)
        let event = try negotiate(.export(export, structuredReplies: structured))
        guard case .ready(let session) = event else { throw ClientFailure("handshake ended with \(event)") }
        self.session = session
        decoder = ReplyDecoder(structuredReplies: session.structuredReplies)
        decoder!.receive(pendingInput)
        pendingInput = []
    }

    /// Runs the client handshake to its final event.
    func negotiate(_ goal: ClientHandshake.Goal) throws -> ClientHandshakeEvent {
        var handshake = ClientHandshake(goal: goal)
        while true {
            let bytes = try receiveSome()
            for event in handshake.receive(bytes) {
                switch event {
                case .send(let reply): try socket.writeAll(reply)
                case .ready:
                    pendingInput = handshake.takeLeftover()
                    return event
                case .listed, .failed: return event
                }
            }
        }
    }

    func receiveSome(max: Int = 1 << 20) throws -> [UInt8] {
        var buffer = [UInt8](repeating: 0, count: max)
        let count = try buffer.withUnsafeMutableBytes { try socket.read(into: $0) }
        guard count > 0 else { throw ClientFailure("server closed the connection") }
        return Array(buffer[..<count])
    }

    func receiveExactly(_ count: Int) throws -> [UInt8] {
        var buffer = [UInt8](repeating: 0, count: count)
        try buffer.withUnsafeMutableBytes { try socket.readExactly(into: $0) }
        return buffer
    }

    func send(_ bytes: [UInt8]) throws { try socket.writeAll(bytes) }

    /// Encodes a request (and its payload) without sending it, and tells the
    /// reply decoder to expect its reply.
    func encode(
        _ command: Command, flags: CommandFlags = [], offset: UInt64 = 0, length: UInt32 = 0,
        payload: [UInt8] = [], cookie: UInt64? = nil
    ) -> (cookie: UInt64, bytes: [UInt8]) {
        let cookie = cookie ?? takeCookie()
        let header = RequestHeader(flags: flags, command: command, cookie: cookie, offset: offset, length: length)
        var bytes: [UInt8] = []
        header.encode(into: &bytes)
        bytes.append(contentsOf: payload)
        if command != .disconnect { decoder!.expect(header) }
        return (cookie, bytes)
    }

    func takeCookie() -> UInt64 {
        defer { nextCookie += 1 }
        return nextCookie
    }

    /// Sends one request and returns its cookie.
    @discardableResult
    func request(
        _ command: Command, flags: CommandFlags = [], offset: UInt64 = 0, length: UInt32 = 0, payload: [UInt8] = []
    ) throws -> UInt64 {
        let (cookie, bytes) = encode(command, flags: flags, offset: offset, length: length, payload: payload)
        try send(bytes)
        return cookie
    }

    /// One finished request: its READ data and its error, if any.
    struct Completion {
        var cookie: UInt64
        var data: [UInt8]
        var error: NBDErrorCode?
        var message: String
    }

    private var partial: [UInt64: [UInt8]] = [:]

    /// The next request to finish, whichever it is.
    func nextCompletion() throws -> Completion {
        while true {
            if let event = try decoder!.next() {
                switch event {
                case .data(let cookie, let offset, let bytes):
                    // Taken out and put back: a copy left in the dictionary
                    // made every chunk of a large reply copy all before it.
                    var data = partial.removeValue(forKey: cookie) ?? []
                    if data.count < offset + bytes.count { data += [UInt8](repeating: 0, count: offset + bytes.count - data.count) }
                    data.replaceSubrange(offset..<(offset + bytes.count), with: bytes)
                    partial[cookie] = data
                case .hole(let cookie, let offset, let length):
                    var data = partial.removeValue(forKey: cookie) ?? []
                    if data.count < offset + length { data += [UInt8](repeating: 0, count: offset + length - data.count) }
                    partial[cookie] = data
                case .completed(let cookie, let error, let message):
                    return Completion(cookie: cookie, data: partial.removeValue(forKey: cookie) ?? [], error: error, message: message)
                }
                continue
            }
            decoder!.receive(try receiveSome())
        }
    }

    /// Sends a request and waits for its reply (nothing else in flight).
    func roundTrip(
        _ command: Command, flags: CommandFlags = [], offset: UInt64 = 0, length: UInt32 = 0, payload: [UInt8] = []
    ) throws -> Completion {
        let cookie = try request(command, flags: flags, offset: offset, length: length, payload: payload)
        let completion = try nextCompletion()
        guard completion.cookie == cookie else { throw ClientFailure("reply for \(completion.cookie), expected \(cookie)") }
        return completion
    }

    func read(at offset: UInt64, length: UInt32) throws -> [UInt8] {
        let completion = try roundTrip(.read, offset: offset, length: length)
        if let error = completion.error { throw ClientFailure("read failed: \(error) \(completion.message)") }
        return completion.data
    }

    func write(_ bytes: [UInt8], at offset: UInt64, flags: CommandFlags = []) throws {
        let completion = try roundTrip(.write, flags: flags, offset: offset, length: UInt32(bytes.count), payload: bytes)
        if let error = completion.error { throw ClientFailure("write failed: \(error) \(completion.message)") }
    }

    /// Whether the server closes the connection within the test timeout
    /// (discarding anything it still sends).
    func isClosedByServer() -> Bool {
        var buffer = [UInt8](repeating: 0, count: 65536)
        let deadline = monotonic() + testIOTimeout
        while monotonic() < deadline {
            do {
                let count = try buffer.withUnsafeMutableBytes { try socket.read(into: $0) }
                if count == 0 { return true }
            } catch SocketError.timedOut {
                return false
            } catch {
                return true  // ECONNRESET and the like.
            }
        }
        return false
    }
}

func monotonic() -> Double {
    var now = timespec()
    clock_gettime(CLOCK_MONOTONIC, &now)
    return Double(now.tv_sec) + Double(now.tv_nsec) / 1e9
}

/// A recognisable, never-all-zero pattern.
func pattern(_ count: Int, seed: Int = 1) -> [UInt8] {
    // Byte i is ((7i + seed) mod 251) + 1, which repeats every 251 bytes:
    // built a period at a time, since a map over many MiB is slow unoptimised.
    let period = (0..<251).map { UInt8((($0 * 7) + seed) % 251 + 1) }
    var bytes: [UInt8] = []
    bytes.reserveCapacity(count)
    while bytes.count < count { bytes += period.prefix(count - bytes.count) }
    return bytes
}
