import BlockDevice
import Glibc
import NBDProtocol
import NBDServer
import Synchronization
import Testing

/// Requests that cannot start asynchronously go to worker threads; a burst
/// of them must get as many workers as it needs (up to the limit), even
/// when one worker is already idle.
@Suite("Worker threads")
struct WorkerStartTests {
    @Test func burstAfterAnIdleWorkerGetsWorkersForAll() throws {
        let device = RendezvousDevice(meeting: NBDServerConfiguration.defaultWorkersPerConnection)
        let fixture = try TestServer(exports: [NBDExport(name: "meet", device: device)])
        let client = try RawClient(fixture.address, export: "meet")
        // One plain read leaves exactly one worker, idle.
        #expect(try client.read(at: RendezvousDevice.plainOffset, length: 4096) == [UInt8](repeating: 0, count: 4096))
        var batch: [UInt8] = []
        for index in 0..<device.meeting {
            batch += client.encode(.read, offset: UInt64(index * 4096), length: 4096).bytes
        }
        try client.send(batch)
        // Each read waits for the others: with too few workers they time
        // out and fail.
        for _ in 0..<device.meeting {
            let completion = try client.nextCompletion()
            #expect(completion.error == nil)
        }
        #expect(device.mostAtOnce == device.meeting)
    }
}

/// Reads below `plainOffset` return only once `meeting` of them are in
/// progress at once (or fail after 5 s); others return at once. Zeroes.
final class RendezvousDevice: BlockDevice {
    static let plainOffset: UInt64 = 1 << 19
    let meeting: Int
    let size: UInt64 = 1 << 20
    let isReadOnly = true
    let capabilities: BlockDeviceCapabilities = []
    let minimumBlockSize: UInt32 = 1
    private let present = Mutex((now: 0, arrived: 0, most: 0))

    init(meeting: Int) { self.meeting = meeting }

    var mostAtOnce: Int { present.withLock { $0.most } }

    func read(at offset: UInt64, into buffer: UnsafeMutableRawBufferPointer) throws(BlockDeviceError) {
        buffer.initializeMemory(as: UInt8.self, repeating: 0)
        guard offset < Self.plainOffset else { return }
        present.withLock { state in
            state.now += 1
            state.arrived += 1
            state.most = max(state.most, state.now)
        }
        defer { present.withLock { $0.now -= 1 } }
        let deadline = monotonic() + 5
        while present.withLock({ $0.arrived }) < meeting {
            guard monotonic() < deadline else { throw .io(operation: "wait for the other reads", errno: ETIMEDOUT) }
            usleep(1000)
        }
    }

    func write(at offset: UInt64, from buffer: UnsafeRawBufferPointer, fua: Bool) throws(BlockDeviceError) {
        throw .readOnly
    }
    func flush() throws(BlockDeviceError) {}
    func trim(at offset: UInt64, length: UInt64, fua: Bool) throws(BlockDeviceError) { throw .readOnly }
    func writeZeroes(at offset: UInt64, length: UInt64, flags: ZeroFlags) throws(BlockDeviceError) { throw .readOnly }
}
