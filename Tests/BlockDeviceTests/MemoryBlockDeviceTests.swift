import BlockDevice
import Testing

@Suite("MemoryBlockDevice")
struct MemoryBlockDeviceTests {
    @Test func readsWritesAndZeroes() throws {
        let device = try MemoryBlockDevice(size: 65536)
        #expect(device.size == 65536)
        #expect(device.capabilities == MemoryBlockDevice.allCapabilities)
        #expect(try device.read(at: 0, count: 65536) == [UInt8](repeating: 0, count: 65536))
        let data = pattern(5000)
        try device.write(data, at: 100)
        #expect(try device.read(at: 100, count: 5000) == data)
        try device.writeZeroes(at: 200, length: 100, flags: [.noHole])
        #expect(try device.read(at: 200, count: 100) == [UInt8](repeating: 0, count: 100))
        #expect(try device.read(at: 100, count: 100) == Array(data[0..<100]))
        try device.trim(at: 0, length: 65536, fua: true)
        #expect(device.snapshot() == [UInt8](repeating: 0, count: 65536))
        try device.flush()
    }

    @Test func holdsInitialContents() throws {
        let device = try MemoryBlockDevice(contents: pattern(1000), readOnly: true)
        #expect(device.size == 1000)
        #expect(try device.read(at: 10, count: 10) == Array(pattern(1000)[10..<20]))
        #expect(device.capabilities == [.multiConnConsistent])
    }

    @Test func refusesOutOfRangeAndReadOnly() throws {
        let device = try MemoryBlockDevice(size: 1024)
        #expect(thrownError { _ = try device.read(at: 1000, count: 25) } == .outOfRange(offset: 1000, length: 25, size: 1024))
        #expect(thrownError { try device.write([1], at: UInt64.max) } == .outOfRange(offset: UInt64.max, length: 1, size: 1024))
        #expect(thrownError { try device.writeZeroes(at: 1, length: 1024, flags: []) } != nil)
        let readOnly = try MemoryBlockDevice(size: 1024, readOnly: true)
        #expect(thrownError { try readOnly.write([1], at: 0) } == .readOnly)
        #expect(thrownError { try readOnly.trim(at: 0, length: 1, fua: false) } == .readOnly)
        #expect(thrownError { try readOnly.writeZeroes(at: 0, length: 1, flags: []) } == .readOnly)
        #expect(thrownError { _ = try MemoryBlockDevice(size: UInt64.max) } != nil)
    }

    @Test func capabilitiesCanBeWithheld() throws {
        let device = try MemoryBlockDevice(size: 4096, capabilities: [.flush], minimumBlockSize: 512)
        #expect(device.capabilities == [.flush])
        #expect(device.minimumBlockSize == 512)
    }

    @Test func servesManyThreadsAtOnce() throws {
        try concurrentStripes(try MemoryBlockDevice(size: 64 * 4096))
    }
}
