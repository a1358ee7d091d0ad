/// A reference to a sealed block: where it is, how to open it, and the tag
/// that authenticates it (docs/format.md, section 5). The tag lives here,
/// in the parent, so a block cannot be replaced by another or an older one.
/// A plain value (no references): pointers are made per block written and
/// copied through the overlay, the log and tree nodes.
public struct BlockPointer: Sendable, Hashable {
    public var block: PhysicalBlock
    /// The salt of the session that sealed the block; with the pool's keys
    /// it determines the sealing key.
    public var salt: SessionSalt
    public var counter: NonceCounter
    /// The commit generation that wrote the block.
    public var generation: UInt64
    /// The 16-byte AES-GCM tag of the block.
    public var tag: BlockTag

    public init(block: PhysicalBlock, salt: SessionSalt, counter: NonceCounter, generation: UInt64, tag: BlockTag) {
        self.block = block
        self.salt = salt
        self.counter = counter
        self.generation = generation
        self.tag = tag
    }

    /// Nothing written: reads as zeroes.
    public static let null = BlockPointer(block: 0, salt: .zero, counter: NonceCounter(rawValue: 0), generation: 0, tag: .zero)

    public var isNull: Bool { block == 0 }

    /// Block and counter only: they already tell apart the pointers one
    /// cache or overlay holds, and equality still compares every field.
    public func hash(into hasher: inout Hasher) {
        hasher.combine(block)
        hasher.combine(counter.rawValue)
    }

    /// The 64-byte on-disk form.
    public func encoded() -> [UInt8] {
        var writer = ByteWriter(size: PoolLayout.pointerSize)
        encode(into: &writer, at: 0)
        return writer.bytes
    }

    func encode(into writer: inout ByteWriter, at offset: Int) {
        writer.put(block, at: offset)
        salt.withUnsafeBytes { writer.put($0, at: offset + 8) }
        writer.put(counter.rawValue, at: offset + 24)
        writer.put(generation, at: offset + 32)
        tag.withUnsafeBytes { writer.put($0, at: offset + 40) }
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
        salt = SessionSalt(value: reader.bytes16(at: offset + 8))
        counter = NonceCounter(rawValue: reader.get(UInt64.self, at: offset + 24))
        generation = reader.get(UInt64.self, at: offset + 32)
        tag = BlockTag(value: reader.bytes16(at: offset + 40))
        if let index = reader.firstNonZero(in: (offset + 56)..<(offset + 64)) {
            throw .nonZeroReserved(structure: "block pointer", offset: index)
        }
        if block == 0, let index = reader.firstNonZero(in: offset..<(offset + 56)) {
            throw .nonZeroReserved(structure: "null block pointer", offset: index)
        }
    }
}
