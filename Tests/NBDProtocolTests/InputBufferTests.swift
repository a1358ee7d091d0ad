import Testing

@testable import NBDProtocol

/// The decoders' input buffer keeps bytes in order across the compaction
/// that moves the unread part down once most of it has been consumed.
@Suite struct InputBufferTests {
    @Test func bytesSurviveCompactionInOrder() {
        var input = InputBuffer()
        let first = (0..<100_000).map { UInt8(truncatingIfNeeded: $0 &* 7) }
        first.withUnsafeBytes { input.append($0) }
        #expect(input.take(70_000) == Array(first[0..<70_000]))
        // 70,000 of 100,000 read: this append compacts first.
        let second = (0..<5_000).map { UInt8(truncatingIfNeeded: $0 &* 13 &+ 1) }
        second.withUnsafeBytes { input.append($0) }
        #expect(input.count == 35_000)
        #expect(input.peek(UInt16.self) == UInt16(first[70_000]) << 8 | UInt16(first[70_001]))
        #expect(input.takeAll() == Array(first[70_000...]) + second)
        #expect(input.isEmpty)
    }

    @Test func aPayloadTakenWholeDoesNotShareTheBuffer() {
        var input = InputBuffer()
        // A large burst first, so the buffer's capacity is large.
        [UInt8](repeating: 1, count: 256 * 1024).withUnsafeBytes { input.append($0) }
        _ = input.takeAll()
        let payload = [UInt8](repeating: 0xA5, count: 4096)
        payload.withUnsafeBytes { input.append($0) }
        let taken = input.take(4096)
        #expect(taken == payload)
        // Its own small array, not the 256 KiB input buffer.
        #expect(taken.capacity < 8192)
        let next = [UInt8](repeating: 0x5A, count: 4096)
        next.withUnsafeBytes { input.append($0) }
        #expect(taken == payload)
        #expect(input.takeAll() == next)
    }

    /// Bytes a socket read writes straight into the buffer's room arrive
    /// in order with appended ones, through compactions and growth, in
    /// reads of every size up to the room offered; a read that fails or
    /// brings nothing leaves the buffer as it was.
    @Test func bytesReceivedInPlaceKeepTheirOrder() {
        struct Refused: Error {}
        var input = InputBuffer()
        var model: [UInt8] = []
        var consumed: [UInt8] = []
        var next: UInt8 = 0
        for round in 0..<400 {
            if round % 7 == 3 {
                let bytes = (0..<(round * 37 % 5000)).map { _ in next &+= 1; return next }
                bytes.withUnsafeBytes { input.append($0) }
                model += bytes
            } else {
                let offered = 1 + round * 4099 % 300_000
                let wanted = round % 5 == 0 ? offered : offered / 3
                let received = input.receive(upTo: offered) { room in
                    #expect(room.count == offered)
                    for index in 0..<wanted { next &+= 1; room[index] = next }
                    return wanted
                }
                #expect(received == wanted)
                model += (0..<wanted).map { _ in UInt8(0) }
                // The model's placeholder bytes become what was written.
                var value = next &- UInt8(truncatingIfNeeded: wanted)
                for index in (model.count - wanted)..<model.count { value &+= 1; model[index] = value }
            }
            #expect(throws: Refused.self) { _ = try input.receive(upTo: 100) { (_: UnsafeMutableRawBufferPointer) throws(Refused) -> Int in throw Refused() } }
            #expect(input.receive(upTo: 10) { _ in 0 } == 0)
            #expect(input.count == model.count - consumed.count)
            // Decode most of what is there, as a decoder would.
            let take = input.count * (round % 3 == 0 ? 1 : 3) / 4
            consumed += input.take(take)
        }
        consumed += input.takeAll()
        #expect(consumed == model)
    }
}
