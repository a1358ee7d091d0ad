import NBDProtocol
import Testing

/// WRITE payloads are handed over in memory of their own: aligned as asked,
/// at an address that stays put, untouched by what the decoder does next.
@Suite struct WritePayloadTests {
    @Test(arguments: [64, 512, 4096])
    func payloadIsAlignedAndOutlivesTheDecoder(alignment: Int) throws {
        let first = (0..<4096).map { UInt8(truncatingIfNeeded: $0 * 7) }
        var decoder: RequestDecoder? = RequestDecoder(payloadAlignment: alignment)
        decoder!.receive(Wire.request(.write, cookie: 1, length: 4096) + first + Wire.request(.write, cookie: 2, length: 4096))
        let request = try #require(try decoder!.next())
        let address = try #require(request.payload.unsafeBytes.baseAddress)
        #expect(Int(bitPattern: address) % alignment == 0)
        // The decoder's buffer is reused for the next payload, then freed.
        decoder!.receive([UInt8](repeating: 0xEE, count: 4096))
        #expect(try decoder!.next().map { Array($0.payload) } == [UInt8](repeating: 0xEE, count: 4096))
        decoder = nil
        #expect(request.payload.unsafeBytes.baseAddress == address)
        #expect(Array(request.payload) == first)
    }

    @Test func payloadsCompareByContent() throws {
        var decoder = RequestDecoder()
        decoder.receive(
            Wire.request(.write, cookie: 1, length: 3) + [1, 2, 3] + Wire.request(.write, cookie: 1, length: 3) + [1, 2, 3]
                + Wire.request(.write, cookie: 1, length: 3) + [1, 2, 4])
        let a = try #require(try decoder.next())
        let b = try #require(try decoder.next())
        let c = try #require(try decoder.next())
        #expect(a.payload !== b.payload)
        #expect(a == b && a.hashValue == b.hashValue)
        #expect(a != c)
        #expect(try decoder.next() == nil)
    }

    @Test(arguments: [false, true])
    func payloadMemoryIsTakenOnceAndGivenBackWhole(direct: Bool) throws {
        let memory = RecordingPayloadMemory()
        let payload = (0..<300).map { UInt8(truncatingIfNeeded: $0) }
        var decoder = RequestDecoder(payloadAlignment: 512, payloadMemory: memory)
        var request: IncomingRequest?
        if direct {
            // The header alone, then the payload read straight into the memory.
            decoder.receive(Wire.request(.write, cookie: 1, length: 300) + payload[..<100])
            #expect(try decoder.next() == nil)
            request = decoder.completePendingWrite { target in target.copyBytes(from: payload[100...]) }
        } else {
            decoder.receive(Wire.request(.write, cookie: 1, length: 300) + payload)
            request = try decoder.next()
        }
        #expect(memory.taken.map(\.count) == [300 + RecordingPayloadMemory.slack])
        #expect(Int(bitPattern: memory.taken.first?.baseAddress) % 512 == 0)
        // The payload shows the bytes it was sent, not the buffer's slack.
        #expect(try Array(#require(request).payload) == payload)
        #expect(memory.given.isEmpty)
        request = nil
        #expect(memory.given.map(\.baseAddress) == memory.taken.map(\.baseAddress))
        #expect(memory.given.map(\.count) == memory.taken.map(\.count))
    }
}

/// Hands out buffers larger than asked (as a cache of size classes does)
/// and records what it hands out and gets back.
private final class RecordingPayloadMemory: PayloadMemory, @unchecked Sendable {
    static let slack = 100
    private(set) var taken: [UnsafeMutableRawBufferPointer] = []
    private(set) var given: [UnsafeMutableRawBufferPointer] = []

    func take(count: Int, alignment: Int) -> UnsafeMutableRawBufferPointer {
        let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: count + Self.slack, alignment: alignment)
        taken.append(buffer)
        return buffer
    }

    func give(_ buffer: UnsafeMutableRawBufferPointer) {
        given.append(buffer)
    }

    deinit { for buffer in taken { buffer.deallocate() } }
}
