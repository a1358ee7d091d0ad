import BlockDevice
import TestSupport
import Threads

/// What the crypt pool sent to its storage, in order, plus marks the
/// workload adds to say what the consumer did.
enum RecordedOperation {
    case write(offset: UInt64, bytes: [UInt8])
    case flush
    case zero(offset: UInt64, length: UInt64)
    case mark(WorkloadEvent)
}

/// A block device that records every change the pool makes to it (like
/// dm-log-writes), and serves reads from the memory device underneath, as
/// a disk's cache would.
final class RecordingDevice: ForwardingBlockDevice {
    let inner: MemoryBlockDevice
    private let log = Guarded<[RecordedOperation]>([])

    init(size: UInt64) throws {
        inner = try MemoryBlockDevice(size: size)
    }

    var operations: [RecordedOperation] { log.withLock { $0 } }
    var count: Int { log.withLock { $0.count } }

    /// Adds a workload mark at this point of the stream.
    func mark(_ event: WorkloadEvent) { log.update { $0.append(.mark(event)) } }

    func write(at offset: UInt64, from buffer: UnsafeRawBufferPointer, fua: Bool) throws(BlockDeviceError) {
        try log.withLock { (log) throws(BlockDeviceError) in
            try inner.write(at: offset, from: buffer, fua: false)
            log.append(.write(offset: offset, bytes: Array(buffer)))
            if fua { log.append(.flush) }
        }
    }

    func flush() throws(BlockDeviceError) {
        log.update { $0.append(.flush) }
    }

    func trim(at offset: UInt64, length: UInt64, fua: Bool) throws(BlockDeviceError) {
        try writeZeroes(at: offset, length: length, flags: fua ? [.fua] : [])
    }

    func writeZeroes(at offset: UInt64, length: UInt64, flags: ZeroFlags) throws(BlockDeviceError) {
        try log.withLock { (log) throws(BlockDeviceError) in
            try inner.writeZeroes(at: offset, length: length, flags: [])
            log.append(.zero(offset: offset, length: length))
            if flags.contains(.fua) { log.append(.flush) }
        }
    }
}
