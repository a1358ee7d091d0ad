import BlockDevice

/// A test device laid over another: every `BlockDevice` member it does not
/// define itself passes on to `inner`, so a recording, counting, holding or
/// misbehaving device spells out only what it does differently.
public protocol ForwardingBlockDevice: BlockDevice {
    associatedtype Inner: BlockDevice
    /// The device the calls pass on to.
    var inner: Inner { get }
}

extension ForwardingBlockDevice {
    public var size: UInt64 { inner.size }
    public var isReadOnly: Bool { inner.isReadOnly }
    public var capabilities: BlockDeviceCapabilities { inner.capabilities }
    public var minimumBlockSize: UInt32 { inner.minimumBlockSize }
    public var sessionEpoch: UInt64 { inner.sessionEpoch }

    public func read(at offset: UInt64, into buffer: UnsafeMutableRawBufferPointer) throws(BlockDeviceError) {
        try inner.read(at: offset, into: buffer)
    }

    public func write(at offset: UInt64, from buffer: UnsafeRawBufferPointer, fua: Bool) throws(BlockDeviceError) {
        try inner.write(at: offset, from: buffer, fua: fua)
    }

    public func flush() throws(BlockDeviceError) { try inner.flush() }

    public func trim(at offset: UInt64, length: UInt64, fua: Bool) throws(BlockDeviceError) {
        try inner.trim(at: offset, length: length, fua: fua)
    }

    public func writeZeroes(at offset: UInt64, length: UInt64, flags: ZeroFlags) throws(BlockDeviceError) {
        try inner.writeZeroes(at: offset, length: length, flags: flags)
    }
}
