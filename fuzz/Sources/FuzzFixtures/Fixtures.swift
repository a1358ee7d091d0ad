import NBDProtocol

/// The export the fuzzed server offers and the fuzzed client asks for.
public enum Fixtures {
    public static let exportName = "fuzz"

    public static let export = ExportDescription(
        name: exportName, description: "fuzzing export", size: 1 << 30,
        flags: [.sendFlush, .sendFUA, .sendTrim, .sendWriteZeroes, .sendFastZero],
        blockSize: BlockSizeConstraints(minimum: 512, preferred: 4096, maximum: 1 << 20))

    public static let catalog = ExportCatalog(exports: [export], defaultExportName: exportName)

    /// Requests the fuzzed client has in flight when replies arrive.
    public static let requestsInFlight: [RequestHeader] = [
        RequestHeader(command: .read, cookie: 1, offset: 0, length: 4096),
        RequestHeader(command: .write, cookie: 2, offset: 4096, length: 512),
        RequestHeader(command: .flush, cookie: 3, offset: 0, length: 0),
        RequestHeader(command: .read, cookie: 4, offset: 1 << 20, length: 8192),
        RequestHeader(command: .trim, cookie: 5, offset: 8192, length: 4096),
        RequestHeader(command: .read, cookie: 6, offset: 512, length: 1),
        RequestHeader(command: .writeZeroes, cookie: 7, offset: 0, length: 1 << 20),
    ]
}

/// Cuts an input into the pieces a socket might deliver: the first byte
/// picks the piece length (1 to 256 bytes; 0 means all at once).
public struct Pieces: Sequence, IteratorProtocol {
    private let bytes: [UInt8]
    private let length: Int
    private var position: Int

    public init(_ bytes: [UInt8], from start: Int = 0) {
        self.bytes = bytes
        let selector = start < bytes.count ? Int(bytes[start]) : 0
        length = selector == 0 ? Int.max : selector
        position = Swift.min(start + 1, bytes.count)
    }

    public mutating func next() -> ArraySlice<UInt8>? {
        guard position < bytes.count else { return nil }
        let end = length >= bytes.count - position ? bytes.count : position + length
        defer { position = end }
        return bytes[position..<end]
    }
}
