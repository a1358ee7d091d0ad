/// Block size constraints advertised with `NBD_INFO_BLOCK_SIZE`.
public struct BlockSizeConstraints: Sendable, Hashable {
    /// Smallest addressable unit; offsets and lengths must be multiples of it.
    public var minimum: UInt32
    /// Size below which requests cost a read-modify-write.
    public var preferred: UInt32
    /// Largest READ or WRITE payload the server accepts.
    public var maximum: UInt32

    public init(minimum: UInt32, preferred: UInt32, maximum: UInt32) {
        self.minimum = minimum
        self.preferred = preferred
        self.maximum = maximum
    }

    /// Whether the values obey the rules of the protocol document: the
    /// minimum a power of two no larger than 64 KiB, the preferred a power of
    /// two at least max(minimum, 512), the maximum at least the preferred.
    public var isValid: Bool {
        minimum > 0 && minimum.nonzeroBitCount == 1 && minimum <= 65536
            && preferred.nonzeroBitCount == 1 && preferred >= max(minimum, 512)
            && maximum >= preferred
    }
}

/// What a server knows about one export and tells its clients.
public struct ExportDescription: Sendable, Hashable {
    public var name: String
    public var description: String
    public var size: UInt64
    /// Transmission flags other than `hasFlags`, which is always sent.
    public var flags: TransmissionFlags
    public var blockSize: BlockSizeConstraints

    public init(
        name: String, description: String = "", size: UInt64, flags: TransmissionFlags,
        blockSize: BlockSizeConstraints
    ) {
        self.name = name
        self.description = description
        self.size = size
        self.flags = flags
        self.blockSize = blockSize
    }

    public var isReadOnly: Bool { flags.contains(.readOnly) }
}

/// The exports a server offers, and which one an empty name selects.
public struct ExportCatalog: Sendable {
    public var exports: [ExportDescription]
    /// The export a client gets when it asks for the empty name; `nil`
    /// means the empty name is unknown unless an export is literally named "".
    public var defaultExportName: String?

    public init(exports: [ExportDescription], defaultExportName: String? = nil) {
        self.exports = exports
        self.defaultExportName = defaultExportName
    }

    public func lookup(_ name: String) -> ExportDescription? {
        if let export = exports.first(where: { $0.name == name }) { return export }
        if name.isEmpty, let defaultName = defaultExportName {
            return exports.first(where: { $0.name == defaultName })
        }
        return nil
    }
}
