import BlockDevice
import NBDProtocol

/// One export a server offers, selected by name with NBD_OPT_GO or
/// NBD_OPT_EXPORT_NAME.
public struct NBDExport: Sendable {
    public var name: String
    /// Sent to clients in NBD_OPT_LIST and NBD_INFO_DESCRIPTION.
    public var description: String
    public var device: any BlockDevice
    /// Refuse writes even if the device accepts them (NBD_FLAG_READ_ONLY).
    public var readOnly: Bool

    public init(name: String, description: String = "", device: any BlockDevice, readOnly: Bool = false) {
        self.name = name
        self.description = description
        self.device = device
        self.readOnly = readOnly
    }

    /// Whether clients may not write: the export or its device says so.
    public var isReadOnly: Bool { readOnly || device.isReadOnly }

    /// The transmission flags advertised for this export, derived from what
    /// the device can do: NBD_FLAG_SEND_FLUSH and NBD_FLAG_SEND_FUA,
    /// NBD_FLAG_SEND_TRIM, NBD_FLAG_SEND_WRITE_ZEROES, NBD_FLAG_SEND_FAST_ZERO,
    /// NBD_FLAG_CAN_MULTI_CONN, NBD_FLAG_ROTATIONAL and NBD_FLAG_READ_ONLY.
    public var transmissionFlags: TransmissionFlags {
        let capabilities = device.capabilities
        var flags: TransmissionFlags = []
        if capabilities.contains(.flush) { flags.formUnion([.sendFlush, .sendFUA]) }
        if capabilities.contains(.trim) { flags.insert(.sendTrim) }
        if capabilities.contains(.writeZeroes) {
            flags.insert(.sendWriteZeroes)
            if capabilities.contains(.fastZero) { flags.insert(.sendFastZero) }
        }
        if capabilities.contains(.multiConnConsistent) { flags.insert(.canMultiConn) }
        if capabilities.contains(.rotational) { flags.insert(.rotational) }
        if isReadOnly {
            // Advertised so that a client that tries them is told EPERM,
            // like a WRITE, rather than EINVAL.
            flags.formUnion([.readOnly, .sendTrim, .sendWriteZeroes])
        }
        return flags
    }

    /// NBD_INFO_BLOCK_SIZE: the device's unit of access, 4 KiB preferred,
    /// and the protocol's payload limit.
    public var blockSize: BlockSizeConstraints {
        let minimum = device.minimumBlockSize
        return BlockSizeConstraints(minimum: minimum, preferred: max(minimum, 4096), maximum: NBDLimits.maxPayload)
    }

    /// What the handshake tells clients about this export.
    var exportDescription: ExportDescription {
        ExportDescription(
            name: name, description: description, size: device.size, flags: transmissionFlags, blockSize: blockSize)
    }
}
