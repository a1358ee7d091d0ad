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
}
