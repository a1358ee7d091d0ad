import NBDProtocol

/// Exports shared by the handshake and transmission tests.
enum Fixtures {
    static let disk = ExportDescription(
        name: "disk", description: "main disk", size: 1 << 30,
        flags: [.sendFlush, .sendFUA, .sendTrim, .sendWriteZeroes, .sendFastZero, .canMultiConn],
        blockSize: BlockSizeConstraints(minimum: 512, preferred: 4096, maximum: 1 << 25))

    static let archive = ExportDescription(
        name: "archive", size: 1 << 20, flags: [.readOnly, .sendFlush],
        blockSize: BlockSizeConstraints(minimum: 4096, preferred: 4096, maximum: 1 << 20))

    /// The empty name selects "disk".
    static let catalog = ExportCatalog(exports: [disk, archive], defaultExportName: "disk")

    /// Transmission flags a client is told for `export`.
    static func wireFlags(_ export: ExportDescription) -> TransmissionFlags {
        export.flags.union(.hasFlags)
    }
}
