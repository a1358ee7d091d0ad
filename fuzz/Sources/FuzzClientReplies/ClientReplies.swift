import FuzzFixtures
import NBDProtocol

/// libFuzzer entry point: the bytes a hostile storage domain sends to the
/// crypt domain's NBD client. The first byte picks the mode: bit 0 the
/// handshake (ClientHandshake, then replies) or replies alone, bit 1
/// structured replies; the second byte how the rest is cut into reads.
/// Replies are decoded by ReplyDecoder with `Fixtures.requestsInFlight`
/// registered, and everything it reports is checked against them: data
/// inside its request, nothing after completion, a successful READ fully
/// covered exactly once.
@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzClientReplies(_ data: UnsafePointer<UInt8>?, _ size: Int) -> Int32 {
    let bytes = data.map { Array(UnsafeBufferPointer(start: $0, count: size)) } ?? []
    guard let mode = bytes.first else { return 0 }
    var structured = mode & 2 != 0
    var pieces = Pieces(bytes, from: 1)
    var leftover: [UInt8] = []
    if mode & 1 != 0 {
        var handshake = ClientHandshake(goal: mode & 4 != 0 ? .list : .export(Fixtures.exportName, structuredReplies: structured))
        var ready = false
        handshaking: while let piece = pieces.next() {
            for event in handshake.receive(piece) {
                switch event {
                case .send: break
                case .ready(let session):
                    structured = session.structuredReplies
                    ready = true
                    break handshaking
                case .listed, .failed: return 0
                }
            }
        }
        guard ready else { return 0 }
        leftover = handshake.takeLeftover()
    }
    var decoder = ReplyDecoder(structuredReplies: structured)
    var tracker = Tracker()
    for request in Fixtures.requestsInFlight {
        decoder.expect(request)
        tracker.expect(request)
    }
    decoder.receive(leftover)
    while true {
        do {
            while let event = try decoder.next() { tracker.check(event) }
        } catch {
            return 0
        }
        guard let piece = pieces.next() else { return 0 }
        decoder.receive(piece)
    }
}

/// The client's own account of what each request has received.
struct Tracker {
    struct Request {
        var header: RequestHeader
        var covered: [Bool]
        var done = false
    }

    var requests: [UInt64: Request] = [:]

    mutating func expect(_ header: RequestHeader) {
        let length = header.command == .read ? Int(header.length) : 0
        requests[header.cookie] = Request(header: header, covered: [Bool](repeating: false, count: length))
    }

    mutating func check(_ event: ReplyEvent) {
        switch event {
        case .data(let cookie, let offset, let bytes):
            cover(cookie, offset, bytes.count)
        case .hole(let cookie, let offset, let length):
            cover(cookie, offset, length)
        case .completed(let cookie, let error, let message):
            guard var request = requests[cookie] else { fatal("a completion for unknown cookie \(cookie)") }
            if request.done { fatal("a second completion for cookie \(cookie)") }
            if error == nil, request.header.command == .read, request.covered.contains(false) {
                fatal("a successful READ with bytes never delivered")
            }
            if message.utf8.count > NBDLimits.maxStringLength { fatal("an error message over the limit") }
            request.done = true
            requests[cookie] = request
        }
    }

    private mutating func cover(_ cookie: UInt64, _ offset: Int, _ length: Int) {
        guard var request = requests[cookie], request.header.command == .read else { fatal("data for a cookie that is not a READ") }
        if request.done { fatal("data after completion") }
        guard offset >= 0, length >= 0, offset + length <= request.covered.count else { fatal("data outside its READ") }
        for index in offset..<(offset + length) {
            if request.covered[index] { fatal("a READ byte delivered twice") }
            request.covered[index] = true
        }
        requests[cookie] = request
    }
}

func check(_ condition: Bool, _ what: @autoclosure () -> String) {
    if !condition { fatal(what()) }
}

func fatal(_ what: String) -> Never {
    fatalError("invariant broken: \(what)")
}
