import FuzzFixtures
import NBDProtocol

/// libFuzzer entry point: the bytes a hostile consumer sends to an NBD
/// server. The first byte picks how they are cut into reads; the rest goes
/// through the fixed newstyle handshake (ServerHandshake) and, once in
/// transmission, through RequestDecoder and validate. Besides not
/// crashing, every request validate accepts must be one the server can
/// carry out safely.
@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzServerRequests(_ data: UnsafePointer<UInt8>?, _ size: Int) -> Int32 {
    let bytes = data.map { Array(UnsafeBufferPointer(start: $0, count: size)) } ?? []
    var handshake = ServerHandshake(catalog: Fixtures.catalog)
    _ = handshake.greeting()
    var pieces = Pieces(bytes)
    var session: NegotiatedSession?
    handshaking: while let piece = pieces.next() {
        for event in handshake.receive(piece) {
            switch event {
            case .send(let reply): check(!reply.isEmpty, "an empty handshake reply")
            case .transmission(let negotiated):
                session = negotiated
                break handshaking
            case .close: return 0
            }
        }
    }
    guard let session else { return 0 }
    var decoder = RequestDecoder()
    decoder.receive(handshake.takeLeftover())
    while true {
        do {
            while let request = try decoder.next() { checkRequest(request, session) }
        } catch {
            return 0
        }
        guard let piece = pieces.next() else { return 0 }
        decoder.receive(piece)
    }
}

/// What must hold of every decoded request and of validate's verdict.
func checkRequest(_ request: IncomingRequest, _ session: NegotiatedSession) {
    let header = request.header
    if header.command == .write {
        check(request.payloadDiscarded || request.payload.count == Int(header.length), "a WRITE payload of the wrong length")
    } else {
        check(request.payload.isEmpty && !request.payloadDiscarded, "a payload on a command without one")
    }
    guard validate(header, payloadDiscarded: request.payloadDiscarded, session: session) == nil else { return }
    let export = session.export
    switch header.command {
    case .read, .write, .trim, .writeZeroes:
        let (end, overflow) = header.offset.addingReportingOverflow(UInt64(header.length))
        check(!overflow && end <= export.size, "an accepted request past the end of the export")
        check(header.length > 0, "an accepted empty request")
        check(header.offset % UInt64(export.blockSize.minimum) == 0, "an accepted misaligned request")
        if header.command == .read || header.command == .write {
            check(header.length <= export.blockSize.maximum, "an accepted request over the maximum payload")
            check(!request.payloadDiscarded, "an accepted WRITE whose payload was discarded")
        }
    case .flush:
        check(header.offset == 0 && header.length == 0, "an accepted FLUSH with a range")
    case .disconnect:
        break
    default:
        check(false, "an accepted unknown command \(header.command)")
    }
}

func check(_ condition: Bool, _ what: @autoclosure () -> String) {
    if !condition { fatalError("invariant broken: \(what())") }
}
