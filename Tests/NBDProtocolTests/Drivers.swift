import NBDProtocol
import Testing

// Drivers that feed each state machine as a real connection would, through
// `feedThreeWays`, and collect what it did.

/// What a state machine made of its input: its events in order, the error
/// that stopped it, and the bytes left after it finished.
struct Decoded<Event: Equatable>: Equatable {
    var events: [Event] = []
    var error: NBDProtocolError?
    /// Handshakes: bytes after the final message (their `takeLeftover()`
    /// plus whatever the driver had not fed yet).
    var leftover: [UInt8] = []
}

extension ServerHandshakeEvent {
    var endsHandshake: Bool {
        if case .send = self { return false }
        return true
    }
}

extension ClientHandshakeEvent {
    var endsHandshake: Bool {
        if case .send = self { return false }
        return true
    }
}

/// Feeds the client's byte stream to a fresh `ServerHandshake`.
func runServer(
    _ catalog: ExportCatalog, _ input: [UInt8], offersStructuredReplies: Bool = true,
    sourceLocation: SourceLocation = #_sourceLocation
) -> Decoded<ServerHandshakeEvent> {
    feedThreeWays(input, sourceLocation: sourceLocation) { chunks in
        var handshake = ServerHandshake(catalog: catalog, offersStructuredReplies: offersStructuredReplies)
        return runHandshake(chunks, receive: { handshake.receive($0) }, ends: \.endsHandshake, takeLeftover: { handshake.takeLeftover() })
    }
}

/// Feeds the server's byte stream to a fresh `ClientHandshake`.
func runClient(
    _ goal: ClientHandshake.Goal, _ input: [UInt8], sourceLocation: SourceLocation = #_sourceLocation
) -> Decoded<ClientHandshakeEvent> {
    feedThreeWays(input, sourceLocation: sourceLocation) { chunks in
        var handshake = ClientHandshake(goal: goal)
        return runHandshake(chunks, receive: { handshake.receive($0) }, ends: \.endsHandshake, takeLeftover: { handshake.takeLeftover() })
    }
}

/// Feeds `chunks` to a handshake until an event ends it; what the handshake
/// holds then and the chunks not fed yet are its leftover.
private func runHandshake<Event: Equatable>(
    _ chunks: [ArraySlice<UInt8>], receive: (ArraySlice<UInt8>) -> [Event], ends: (Event) -> Bool,
    takeLeftover: () -> [UInt8]
) -> Decoded<Event> {
    var outcome = Decoded<Event>()
    var ended = false
    for chunk in chunks {
        if ended {
            outcome.leftover += chunk
            continue
        }
        let events = receive(chunk)
        outcome.events += events
        if events.contains(where: ends) {
            ended = true
            outcome.leftover = takeLeftover()
        }
    }
    return outcome
}

/// Feeds a request stream to a fresh `RequestDecoder`, draining `next()`
/// after every read as the server's connection loop does.
func decodeRequests(
    _ input: [UInt8], maxPayload: UInt32 = NBDLimits.maxPayload, sourceLocation: SourceLocation = #_sourceLocation
) -> Decoded<IncomingRequest> {
    feedThreeWays(input, sourceLocation: sourceLocation) { chunks in
        var decoder = RequestDecoder(maxPayload: maxPayload)
        var outcome = Decoded<IncomingRequest>()
        do throws(NBDProtocolError) {
            for chunk in chunks {
                decoder.receive(chunk)
                while let request = try decoder.next() { outcome.events.append(request) }
            }
        } catch {
            outcome.error = error
        }
        return outcome
    }
}

/// Feeds a reply stream to a fresh `ReplyDecoder` that expects `requests`,
/// and checks that a decoder handing out READ payloads as transfers
/// (`decodeRepliesTransferring`) makes the same of it.
func decodeReplies(
    _ input: [UInt8], structured: Bool, expecting requests: [RequestHeader],
    maxPayload: UInt32 = NBDLimits.maxPayload, sourceLocation: SourceLocation = #_sourceLocation
) -> Decoded<ReplyEvent> {
    let outcome = decodeRepliesEventsOnly(input, structured: structured, expecting: requests, maxPayload: maxPayload, sourceLocation: sourceLocation)
    let transferring = decodeRepliesTransferring(
        input, structured: structured, expecting: requests, maxPayload: maxPayload, sourceLocation: sourceLocation)
    #expect(transferring == outcome, "transfers disagree with events", sourceLocation: sourceLocation)
    return outcome
}

private func decodeRepliesEventsOnly(
    _ input: [UInt8], structured: Bool, expecting requests: [RequestHeader],
    maxPayload: UInt32, sourceLocation: SourceLocation
) -> Decoded<ReplyEvent> {
    feedThreeWays(input, sourceLocation: sourceLocation) { chunks in
        var decoder = ReplyDecoder(structuredReplies: structured, maxPayload: maxPayload)
        for request in requests { decoder.expect(request) }
        var outcome = Decoded<ReplyEvent>()
        do throws(NBDProtocolError) {
            for chunk in chunks {
                decoder.receive(chunk)
                while let event = try decoder.next() { outcome.events.append(event) }
            }
        } catch {
            outcome.error = error
        }
        return outcome
    }
}

/// Like `decodeReplies`, with `transfersData`: the driver places each
/// transfer's payload as the client's reader does (buffered bytes taken as
/// they arrive) and reports it as one `.data` event once complete.
func decodeRepliesTransferring(
    _ input: [UInt8], structured: Bool, expecting requests: [RequestHeader],
    maxPayload: UInt32 = NBDLimits.maxPayload, sourceLocation: SourceLocation = #_sourceLocation
) -> Decoded<ReplyEvent> {
    feedThreeWays(input, sourceLocation: sourceLocation) { chunks in
        var decoder = ReplyDecoder(structuredReplies: structured, maxPayload: maxPayload, transfersData: true)
        for request in requests { decoder.expect(request) }
        var outcome = Decoded<ReplyEvent>()
        var placed: (cookie: UInt64, offset: Int, bytes: [UInt8])?
        do throws(NBDProtocolError) {
            for chunk in chunks {
                decoder.receive(chunk)
                while true {
                    if let event = try decoder.next() {
                        outcome.events.append(event)
                        continue
                    }
                    guard let transfer = decoder.transfer, decoder.bufferedTransferBytes > 0 else { break }
                    if placed == nil { placed = (transfer.cookie, transfer.offset, []) }
                    let count = decoder.bufferedTransferBytes
                    let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: count, alignment: 1)
                    defer { buffer.deallocate() }
                    try decoder.takeTransferBytes(count, into: buffer)
                    placed?.bytes += buffer
                    if decoder.transfer == nil, let done = placed {
                        // The completion (if any) is queued behind the data.
                        outcome.events.append(.data(cookie: done.cookie, offset: done.offset, bytes: done.bytes))
                        placed = nil
                    }
                }
            }
        } catch {
            outcome.error = error
        }
        return outcome
    }
}
