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
}
