import PoolFormat

/// libFuzzer entry point: pool metadata as the untrusted storage domain
/// returns it. The first byte picks the decoder (superblock, pool header,
/// keyslot, tree node, log block, pool object, volume table block, block
/// pointer) and whether the rest is used as is or padded to a 4 KiB block.
/// Besides not crashing, whatever decodes must encode and decode back to
/// the same value.
@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzPoolFormat(_ data: UnsafePointer<UInt8>?, _ size: Int) -> Int32 {
    let bytes = data.map { Array(UnsafeBufferPointer(start: $0, count: size)) } ?? []
    guard let selector = bytes.first else { return 0 }
    var block = Array(bytes.dropFirst())
    if selector & 0x80 == 0 {
        // Most decoders want exactly one block: pad or cut to it.
        let length = selector & 0x0F == 7 ? PoolLayout.pointerSize : PoolLayout.blockSize
        block = Array((block + [UInt8](repeating: 0, count: max(0, length - block.count))).prefix(length))
    }
    switch selector & 0x0F {
    case 0:
        // Bytes the format leaves unassigned (superblock 10..<16) are not
        // checked on decode and not kept: the HMAC covers them as stored.
        guard let (superblock, _, mac) = try? Superblock.decode(block) else { return 0 }
        roundTrip(superblock, superblock.block(mac: mac)) { try Superblock.decode($0).0 }
    case 1:
        guard let (header, _, mac) = try? PoolHeader.decode(block) else { return 0 }
        roundTrip(header, header.block(mac: mac)) { try PoolHeader.decode($0).0 }
    case 2:
        guard let slot = try? KeyslotBlock.decode(block) else { return 0 }
        roundTrip(slot, slot.encoded()) { try KeyslotBlock.decode($0)! }
    case 3:
        guard let node = try? TreeNode(decoding: block) else { return 0 }
        roundTrip(node, node.encoded()) { try TreeNode(decoding: $0) }
    case 4:
        guard let log = try? LogBlock(decoding: block) else { return 0 }
        check(log.records.count <= PoolLayout.logRecordsPerBlock, "log block: more records than fit")
        roundTrip(log, log.encoded()) { try LogBlock(decoding: $0) }
    case 5:
        guard let object = try? PoolObject(decoding: block) else { return 0 }
        check(object.volumeTable.count <= PoolLayout.maxVolumeTableBlocks, "pool object: too many volume table blocks")
        roundTrip(object, object.encoded()) { try PoolObject(decoding: $0) }
    case 6:
        guard let table = try? VolumeTableBlock(decoding: block) else { return 0 }
        check(table.volumes.count <= PoolLayout.volumesPerTableBlock, "volume table: too many volumes")
        roundTrip(table, table.encoded()) { try VolumeTableBlock(decoding: $0) }
    case 7:
        guard let pointer = try? BlockPointer(decoding: block) else { return 0 }
        roundTrip(pointer, pointer.encoded()) { try BlockPointer(decoding: $0) }
    default:
        break
    }
    return 0
}

/// Decoding `encoded` must give `value` back.
func roundTrip<Value: Equatable>(_ value: Value, _ encoded: [UInt8], _ decode: ([UInt8]) throws -> Value) {
    guard let again = try? decode(encoded) else { fatalError("invariant broken: \(Value.self) does not decode its own encoding") }
    check(again == value, "\(Value.self) changes in a round trip")
}

func check(_ condition: Bool, _ what: @autoclosure () -> String) {
    if !condition { fatalError("invariant broken: \(what())") }
}
