/// Bytes of a device that lie, in order, in one file the server can hand
/// to a socket with sendfile(2).
public struct FileRange: Sendable, Equatable {
    /// The open file, valid while `owner` lives.
    public let descriptor: Int32
    public let offset: Int64
    public let count: Int
    /// What closes the descriptor (the device): a range queued for sending
    /// keeps it open, so a reused descriptor never sends another file.
    public let owner: any AnyObject & Sendable

    public init(descriptor: Int32, offset: Int64, count: Int, owner: any AnyObject & Sendable) {
        self.descriptor = descriptor
        self.offset = offset
        self.count = count
        self.owner = owner
    }

    public static func == (a: FileRange, b: FileRange) -> Bool {
        a.descriptor == b.descriptor && a.offset == b.offset && a.count == b.count && a.owner === b.owner
    }
}

/// A device whose READs can go from the page cache straight to the
/// client's socket: an NBD server sends the reply header, then the range
/// with sendfile(2), and the bytes are never copied through its memory
/// (one copy instead of a read's copy out of the page cache plus a send's
/// copy into the socket).
public protocol SplicingBlockDevice: BlockDevice {
    /// Where the `count` bytes at `offset` lie, if sending them now cannot
    /// wait for a disk or fail part way: nil sends them the ordinary way.
    /// The caller has checked the range against the device's size.
    func splicedRange(at offset: UInt64, count: Int) -> FileRange?

    /// Whether WRITEs may go from the client's socket straight into the
    /// device's file (`splicedWriteRange`): an NBD server then keeps a pipe
    /// per connection for them.
    var splicesWrites: Bool { get }

    /// Where the `count` bytes of a WRITE at `offset` go in the file, if the
    /// server may splice them there itself, on the thread reading requests
    /// (a write that cannot wait for a disk): nil writes them the ordinary
    /// way. The caller has checked the range against the device's size.
    func splicedWriteRange(at offset: UInt64, count: Int) -> FileRange?
}

extension SplicingBlockDevice {
    public var splicesWrites: Bool { false }
    public func splicedWriteRange(at offset: UInt64, count: Int) -> FileRange? { nil }
}
