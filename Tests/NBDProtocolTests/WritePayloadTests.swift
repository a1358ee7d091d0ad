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
}
