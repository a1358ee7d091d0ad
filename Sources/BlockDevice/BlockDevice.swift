/// What a block device can do beyond reading and writing, so that a server
/// advertises only what holds.
public struct BlockDeviceCapabilities: OptionSet, Sendable, Hashable {
    public let rawValue: UInt32
    public init(rawValue: UInt32) { self.rawValue = rawValue }
    /// Writes can be made durable (NBD_CMD_FLUSH, FUA).
    public static let flush = BlockDeviceCapabilities(rawValue: 1 << 0)
    /// Ranges can be discarded (NBD_CMD_TRIM).
    public static let trim = BlockDeviceCapabilities(rawValue: 1 << 1)
    /// Ranges can be zeroed without sending zeroes (NBD_CMD_WRITE_ZEROES).
    public static let writeZeroes = BlockDeviceCapabilities(rawValue: 1 << 2)
    /// Zeroing is cheap: it never falls back to writing zero buffers (NBD_CMD_FLAG_FAST_ZERO).
    public static let fastZero = BlockDeviceCapabilities(rawValue: 1 << 3)
    /// A flush through any handle covers writes made through every handle
    /// (NBD_FLAG_CAN_MULTI_CONN).
    public static let multiConnConsistent = BlockDeviceCapabilities(rawValue: 1 << 4)
    /// Backed by spinning media.
    public static let rotational = BlockDeviceCapabilities(rawValue: 1 << 5)
}

/// How NBD_CMD_WRITE_ZEROES may be carried out.
public struct ZeroFlags: OptionSet, Sendable, Hashable {
    public let rawValue: UInt8
    public init(rawValue: UInt8) { self.rawValue = rawValue }
    /// Make the zeroes durable before returning (NBD_CMD_FLAG_FUA).
    public static let fua = ZeroFlags(rawValue: 1 << 0)
    /// Allocate the range rather than punching a hole (NBD_CMD_FLAG_NO_HOLE).
    public static let noHole = ZeroFlags(rawValue: 1 << 1)
    /// Fail with `.notSupported` rather than write zero buffers (NBD_CMD_FLAG_FAST_ZERO).
    public static let fast = ZeroFlags(rawValue: 1 << 2)
}

/// Why a block device operation failed. Each case maps onto one NBD error,
/// so a server can tell its client what happened.
public enum BlockDeviceError: Error, Sendable, Equatable, CustomStringConvertible {
    /// The storage failed: `errno` from the system, with what was being done.
    case io(operation: String, errno: Int32)
    /// The range lies outside the device.
    case outOfRange(offset: UInt64, length: UInt64, size: UInt64)
    /// The device is read-only.
    case readOnly
    /// The device cannot do this, or cannot do it fast enough (FAST_ZERO).
    case notSupported(String)
    /// The device is full.
    case noSpace
    /// The device is shutting down or has gone away.
    case unavailable(String)

    public var description: String {
        switch self {
        case .io(let operation, let code): "\(operation) failed: \(systemErrorMessage(code)) (errno \(code))"
        case .outOfRange(let offset, let length, let size): "range \(offset)+\(length) lies outside the device of \(size) bytes"
        case .readOnly: "the device is read-only"
        case .notSupported(let what): "not supported: \(what)"
        case .noSpace: "no space left on the device"
        case .unavailable(let why): "device unavailable: \(why)"
        }
    }
}

/// A byte-addressed device of fixed size: the one abstraction every layer of
/// Bulkhead implements (a raw file or disk, a remote NBD export, a crypt
/// volume) and every server serves. Methods are synchronous and may be
/// called from many threads at once; callers check ranges against `size`
/// first, and implementations check them again.
public protocol BlockDevice: AnyObject, Sendable {
    /// Size in bytes.
    var size: UInt64 { get }
    /// Whether writes are refused.
    var isReadOnly: Bool { get }
    /// What beyond read and write the device supports.
    var capabilities: BlockDeviceCapabilities { get }
    /// Smallest unit of access in bytes (1 for byte-addressable devices, 512
    /// or 4096 with O_DIRECT).
    var minimumBlockSize: UInt32 { get }
    /// Changes whenever the device starts a new session with what backs it
    /// (a remote device reconnected, perhaps to a restarted server): a flush
    /// then covers only writes acknowledged in its own session, and writes
    /// acknowledged earlier may be lost without any error. 0 and never
    /// changing for local devices.
    var sessionEpoch: UInt64 { get }

    /// Reads `buffer.count` bytes at `offset` (NBD_CMD_READ).
    func read(at offset: UInt64, into buffer: UnsafeMutableRawBufferPointer) throws(BlockDeviceError)
    /// Writes `buffer` at `offset`; with `fua`, durably (NBD_CMD_WRITE).
    func write(at offset: UInt64, from buffer: UnsafeRawBufferPointer, fua: Bool) throws(BlockDeviceError)
    /// Makes every completed write durable (NBD_CMD_FLUSH).
    func flush() throws(BlockDeviceError)
    /// Discards a range; its contents become unspecified (NBD_CMD_TRIM).
    func trim(at offset: UInt64, length: UInt64, fua: Bool) throws(BlockDeviceError)
    /// Sets a range to zeroes (NBD_CMD_WRITE_ZEROES).
    func writeZeroes(at offset: UInt64, length: UInt64, flags: ZeroFlags) throws(BlockDeviceError)
}

extension BlockDevice {
    /// A local device has one session for its lifetime.
    public var sessionEpoch: UInt64 { 0 }

    /// Checks that `offset..<offset+length` lies inside the device, without overflow.
    public func checkRange(_ offset: UInt64, _ length: UInt64) throws(BlockDeviceError) {
        let (end, overflow) = offset.addingReportingOverflow(length)
        guard !overflow, end <= size else { throw .outOfRange(offset: offset, length: length, size: size) }
    }
}
