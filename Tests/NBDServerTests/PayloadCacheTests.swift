import BlockDevice
import NBDServer
import Testing
import TestSupport

/// WRITE payloads of a block and more borrow their memory from the server's
/// `PayloadCache` and give it back when the request is done, so a stream
/// of 1 MiB WRITEs reuses one buffer instead of mapping a new one each.
@Suite struct PayloadCacheTests {
    @Test func largeWritesReuseOneCachedBuffer() throws {
        let cache = PayloadCache(retainedBytes: 4 << 20)
        let device = try MemoryBlockDevice(size: 4 << 20)
        let fixture = try TestServer(
            exports: [NBDExport(name: "mem", device: device)],
            configuration: NBDServerConfiguration(payloadMemory: cache))
        let client = try RawClient(fixture.address, export: "mem")
        for index in 0..<3 {
            let data = pattern(1 << 20, seed: index)
            try client.write(data, at: UInt64(index) << 20)
            // Given back once the reply is out; the next WRITE takes it again.
            #expect(eventually(timeout: 5) { cache.idle.count == 1 })
            #expect(cache.idle.bytes == 1 << 20)
            #expect(try client.read(at: UInt64(index) << 20, length: 1 << 20) == data)
        }
        // A 4 KiB payload is cached too, in its own size class.
        try client.write(pattern(4096, seed: 9), at: 0)
        #expect(eventually(timeout: 5) { cache.idle.count == 2 })
        #expect(cache.idle.bytes == (1 << 20) + 4096)
        // Payloads below a block come from malloc and leave the cache alone.
        try client.write(pattern(512, seed: 10), at: 8192)
        #expect(cache.idle.count == 2)
        #expect(try client.read(at: 8192, length: 512) == pattern(512, seed: 10))
    }
}
