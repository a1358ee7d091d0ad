/// A reference to a sealed block: where it is, how to open it, and the tag
/// that authenticates it (docs/format.md, section 5). The tag lives here,
/// in the parent, so a block cannot be replaced by another or an older one.
public struct BlockPointer: Sendable, Hashable {
    public var block: PhysicalBlock
    public var session: SessionIndex
    public var counter: NonceCounter
    /// The commit generation that wrote the block.
    public var generation: UInt64
    /// The 16-byte AES-GCM tag of the block.
    public var tag: [UInt8]

    public init(block: PhysicalBlock, session: SessionIndex, counter: NonceCounter, generation: UInt64, tag: [UInt8]) {
        precondition(tag.count == 16)
        self.block = block
        self.session = session
        self.counter = counter
        self.generation = generation
        self.tag = tag
    }

    /// Nothing written: reads as zeroes.
    public static let null = BlockPointer(
        block: 0, session: SessionIndex(rawValue: 0), counter: NonceCounter(rawValue: 0), generation: 0,
        tag: [UInt8](repeating: 0, count: 16))

    public var isNull: Bool { block == 0 }

    /// The 64-byte on-disk form.
    public func encoded() -> [UInt8] {
        var writer = ByteWriter(size: PoolLayout.pointerSize)
        encode(into: &writer, at: 0)
        return writer.bytes
    }

    func encode(into writer: inout ByteWriter, at offset: Int) {
        writer.put(block, at: offset)
        writer.put(session.rawValue, at: offset + 8)
        writer.put(counter.rawValue, at: offset + 16)
        writer.put(generation, at: offset + 24)
        writer.put(tag, at: offset + 32)
    }

    /// Decodes a pointer; a null pointer must be all zeroes and reserved
    /// bytes must be zero, so no bit of a pointer goes unchecked.
    public init(decoding bytes: [UInt8]) throws(FormatError) {
        guard bytes.count == PoolLayout.pointerSize else {
            throw .wrongSize(structure: "block pointer", expected: PoolLayout.pointerSize, found: bytes.count)
        }
        try self.init(reader: ByteReader(bytes: bytes), at: 0)
    }

    init(reader: ByteReader, at offset: Int) throws(FormatError) {
        block = reader.get(UInt64.self, at: offset)
        session = SessionIndex(rawValue: reader.get(UInt32.self, at: offset + 8))
        let flags = reader.get(UInt32.self, at: offset + 12)
        counter = NonceCounter(rawValue: reader.get(UInt64.self, at: offset + 16))
        generation = reader.get(UInt64.self, at: offset + 24)
        tag = reader.slice(offset + 32, 16)
        guard flags == 0 else { throw .nonZeroReserved(structure: "block pointer", offset: offset + 12) }
        for index in (offset + 48)..<(offset + 64) where reader.bytes[index] != 0 {
            throw .nonZeroReserved(structure: "block pointer", offset: index)
        }
        if block == 0 {
            for index in offset..<(offset + 48) where reader.bytes[index] != 0 {
                throw .nonZeroReserved(structure: "null block pointer", offset: index)
            }
        }
    }
}
