#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif

/// A block device held in memory, zero-filled at creation. Safe to use from
/// many threads: reads share a lock, writes take it exclusively. For tests,
/// and for volumes that need no persistence.
public final class MemoryBlockDevice: BlockDevice, @unchecked Sendable {
    // SAFETY: `storage` is allocated once in init and freed in deinit; every
    // access to its bytes holds `lock` (shared for reads, exclusive for
    // changes). The pthread lock lives in stable heap memory.
    private let storage: UnsafeMutableRawPointer
    private let lock: UnsafeMutablePointer<pthread_rwlock_t>

    public let size: UInt64
    public let isReadOnly: Bool
    public let capabilities: BlockDeviceCapabilities
    public let minimumBlockSize: UInt32

    /// Everything a memory device can do.
    public static let allCapabilities: BlockDeviceCapabilities = [
        .flush, .trim, .writeZeroes, .fastZero, .multiConnConsistent,
    ]

    /// A zero-filled device of `size` bytes. `capabilities` may withhold
    /// features, to present a less capable device.
    public init(
        size: UInt64, readOnly: Bool = false, capabilities: BlockDeviceCapabilities = allCapabilities,
        minimumBlockSize: UInt32 = 1
    ) throws(BlockDeviceError) {
        guard size <= UInt64(Int.max), let memory = calloc(max(Int(size), 1), 1) else {
            throw .io(operation: "allocate \(size) bytes of memory", errno: ENOMEM)
        }
        storage = memory
        lock = .allocate(capacity: 1)
        lock.initialize(to: pthread_rwlock_t())
        pthread_rwlock_init(lock, nil)
        self.size = size
        self.isReadOnly = readOnly
        self.capabilities = capabilities.intersection(readOnly ? [.multiConnConsistent] : Self.allCapabilities)
        self.minimumBlockSize = minimumBlockSize
    }

    /// A device holding `contents`.
    public convenience init(contents: [UInt8], readOnly: Bool = false) throws(BlockDeviceError) {
        try self.init(size: UInt64(contents.count), readOnly: readOnly)
        contents.withUnsafeBytes { storage.copyMemory(from: $0.baseAddress!, byteCount: $0.count) }
    }

    deinit {
        pthread_rwlock_destroy(lock)
        lock.deallocate()
        free(storage)
    }

    public func read(at offset: UInt64, into buffer: UnsafeMutableRawBufferPointer) throws(BlockDeviceError) {
        try checkRange(offset, UInt64(buffer.count))
        guard buffer.count > 0 else { return }
        pthread_rwlock_rdlock(lock)
        defer { pthread_rwlock_unlock(lock) }
        buffer.baseAddress!.copyMemory(from: storage + Int(offset), byteCount: buffer.count)
    }

    public func write(at offset: UInt64, from buffer: UnsafeRawBufferPointer, fua: Bool) throws(BlockDeviceError) {
        guard !isReadOnly else { throw .readOnly }
        try checkRange(offset, UInt64(buffer.count))
        guard buffer.count > 0 else { return }
        pthread_rwlock_wrlock(lock)
        defer { pthread_rwlock_unlock(lock) }
        (storage + Int(offset)).copyMemory(from: buffer.baseAddress!, byteCount: buffer.count)
    }

    public func flush() throws(BlockDeviceError) {}

    public func trim(at offset: UInt64, length: UInt64, fua: Bool) throws(BlockDeviceError) {
        try zero(offset, length)
    }

    public func writeZeroes(at offset: UInt64, length: UInt64, flags: ZeroFlags) throws(BlockDeviceError) {
        try zero(offset, length)
    }

    private func zero(_ offset: UInt64, _ length: UInt64) throws(BlockDeviceError) {
        guard !isReadOnly else { throw .readOnly }
        try checkRange(offset, length)
        pthread_rwlock_wrlock(lock)
        defer { pthread_rwlock_unlock(lock) }
        memset(storage + Int(offset), 0, Int(length))
    }

    /// A copy of the whole contents, for inspection in tests.
    public func snapshot() -> [UInt8] {
        pthread_rwlock_rdlock(lock)
        defer { pthread_rwlock_unlock(lock) }
        return Array(UnsafeRawBufferPointer(start: storage, count: Int(size)))
    }
}

extension MemoryBlockDevice: InlineBlockDevice {
    public var runsInline: Bool { true }
}
