import NBDProtocol
import Testing

/// `RequestDecoder.completePendingWrite(reading:)`, which the server uses
/// to read large WRITE payloads straight into place.
@Suite("Direct WRITE payloads")
struct DirectPayloadTests {
    struct Failure: Error {}

    @Test func payloadIsBufferedBytesThenDirectBytes() throws {
        var decoder = RequestDecoder()
        var bytes: [UInt8] = []
        RequestHeader(command: .write, cookie: 5, offset: 4096, length: 100_000).encode(into: &bytes)
        let payload = pattern(100_000, seed: 3)
        decoder.receive(bytes + payload[..<1000])
        #expect(decoder.missingPayloadCount == 0)  // Header not decoded yet.
        #expect(try decoder.next() == nil)
        #expect(decoder.missingPayloadCount == 99_000)
        var offered = UnsafeMutableRawBufferPointer(start: nil, count: 0)
        let request = try decoder.completePendingWrite { (buffer: UnsafeMutableRawBufferPointer) throws(Failure) in
            offered = buffer
            payload[1000...].withUnsafeBytes { buffer.copyMemory(from: $0) }
        }
        // The bytes still to come are read into the payload itself: no copy.
        #expect(offered.count == 99_000)
        #expect(UnsafeRawPointer(offered.baseAddress) == request.payload.unsafeBytes.baseAddress.map { $0 + 1000 })
        #expect(request.header.cookie == 5 && request.header.length == 100_000)
        #expect(Array(request.payload) == payload)
        #expect(decoder.missingPayloadCount == 0)
        // The stream carries on after the payload.
        var next: [UInt8] = []
        RequestHeader(command: .read, cookie: 6, offset: 0, length: 512).encode(into: &next)
        decoder.receive(next)
        #expect(try decoder.next()?.header.cookie == 6)
    }

    @Test func failedReadThrowsAndLeavesNothingPending() {
        var decoder = RequestDecoder()
        var bytes: [UInt8] = []
        RequestHeader(command: .write, cookie: 1, offset: 0, length: 70_000).encode(into: &bytes)
        decoder.receive(bytes)
        #expect((try? decoder.next()) == .some(nil))
        #expect(decoder.missingPayloadCount == 70_000)
        #expect(throws: Failure.self) {
            _ = try decoder.completePendingWrite { (_: UnsafeMutableRawBufferPointer) throws(Failure) in throw Failure() }
        }
        #expect(decoder.missingPayloadCount == 0)
    }
}
