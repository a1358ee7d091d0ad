/// An interior or leaf-level node of a radix tree: 64 child pointers
/// (docs/format.md, section 8.2). Which level it is and what it covers are
/// bound by the sealing's associated data, not stored in the node.
public struct TreeNode: Sendable, Hashable {
    public var children: [BlockPointer]

    public init(children: [BlockPointer] = Array(repeating: .null, count: PoolLayout.fanOut)) {
        precondition(children.count == PoolLayout.fanOut)
        self.children = children
    }

    public var isEmpty: Bool { children.allSatisfy(\.isNull) }

    public func encoded() -> [UInt8] {
        var writer = ByteWriter(size: PoolLayout.blockSize)
        for (index, child) in children.enumerated() {
            child.encode(into: &writer, at: index * PoolLayout.pointerSize)
        }
        return writer.bytes
    }

    public init(decoding block: [UInt8]) throws(FormatError) {
        guard block.count == PoolLayout.blockSize else {
            throw .wrongSize(structure: "tree node", expected: PoolLayout.blockSize, found: block.count)
        }
        let reader = ByteReader(bytes: block)
        var children: [BlockPointer] = []
        children.reserveCapacity(PoolLayout.fanOut)
        for index in 0..<PoolLayout.fanOut {
            children.append(try BlockPointer(reader: reader, at: index * PoolLayout.pointerSize))
        }
        self.children = children
    }
}
