/// A regular file read and written through the page cache finishes a
/// request in a few microseconds of copying, less than handing it to
/// another thread costs, so the server's connection thread does it on the
/// spot. A block device or O_DIRECT file may wait for the disk: those
/// requests go to worker threads, so one slow request does not hold up the
/// ones behind it.
extension FileBlockDevice: AsynchronousBlockDevice {
    /// Whether requests run on the calling thread (a regular file without O_DIRECT).
    public var runsInline: Bool { !isBlockDevice && !isDirect }

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
