import BlockDevice
import Glibc
import NBDServer
import Sockets
import Testing

/// Replies the socket cannot take at once go out through a flusher
/// thread, which stays parked a little while after the queue empties and
/// is claimed for the next burst (`ReplyChannel.flusherLinger`).
@Suite("Reply flusher")
struct ReplyFlusherTests {
    /// Bursts of READ replies several times a socket buffer, with pauses
    /// shorter than the linger (the parked flusher carries the next burst)
    /// and longer (it has left; a new one starts): every reply arrives
    /// whole and right, and the connection keeps serving.
    @Test func burstsAfterShortAndLongPausesAllArriveWhole() throws {
        let length = 2 * Int(Socket.unixSendBufferBytes)
        let contents = pattern(4 * length, seed: 9)
        let device = try MemoryBlockDevice(contents: contents)
        let (fixture, client) = try serveDisk(device)
        for pause in [0.0, 0.01, 0.01, 0.2, 0.0, 0.01, 0.2] {
            var batch: [UInt8] = []
            var expected: [UInt64: [UInt8]] = [:]
            for index in 0..<3 {
                let offset = index * length + 4096 * index
                let read = client.encode(.read, offset: UInt64(offset), length: UInt32(length))
                batch += read.bytes
                expected[read.cookie] = Array(contents[offset..<(offset + length)])
            }
            try client.send(batch)
            // Not reading yet: the replies fill the socket and queue.
            usleep(20_000)
            for _ in 0..<3 {
                let completion = try client.nextCompletion()
                #expect(completion.error == nil)
                let want = expected.removeValue(forKey: completion.cookie)
                #expect(want != nil && completion.data == want, "reply \(completion.cookie): \(completion.data.count) bytes")
            }
            #expect(expected.isEmpty)
            usleep(useconds_t(pause * 1_000_000))
        }
        #expect(try client.read(at: 4096, length: 4096) == Array(contents[4096..<8192]))
        _ = fixture
    }
}
