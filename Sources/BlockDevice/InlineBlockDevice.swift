/// A device whose requests finish in a few microseconds of copying (memory,
/// the page cache): less than handing them to another thread costs, so
/// `start` runs them on the calling thread, when `runsInline` says so.
public protocol InlineBlockDevice: AsynchronousBlockDevice {
    /// Whether READ and WRITE without FUA run on the calling thread.
    var runsInline: Bool { get }
}

extension InlineBlockDevice {
    public func startRead(
        at offset: UInt64, into buffer: UnsafeMutableRawBufferPointer,
        completion: @escaping @Sendable (AsynchronousOutcome) -> Void
    ) -> Bool {
        guard runsInline else { return false }
        do throws(BlockDeviceError) {
            try read(at: offset, into: buffer)
            completion(.done)
        } catch {
            completion(.failed(error))
        }
        return true
    }

    public func startWrite(
        at offset: UInt64, from buffer: UnsafeRawBufferPointer, fua: Bool,
        completion: @escaping @Sendable (AsynchronousOutcome) -> Void
    ) -> Bool {
        // FUA waits for the disk.
        guard runsInline, !fua else { return false }
        do throws(BlockDeviceError) {
            try write(at: offset, from: buffer, fua: false)
            completion(.done)
        } catch {
            completion(.failed(error))
        }
        return true
    }
}
