import PoolFormat
import Testing

@Suite struct AssociatedDataTests {
    let salt = SessionSalt(bytes: patterned(16, seed: 3))

    func data(
        pool: [UInt8] = samplePoolID, volume: UInt32 = 4, block: UInt64 = 1000, salt: SessionSalt? = nil, counter: UInt64 = 17
    ) -> [UInt8] {
        AssociatedData.data(
            pool: pool, volume: VolumeID(rawValue: volume), block: LogicalBlock(block), salt: salt ?? self.salt,
            counter: NonceCounter(rawValue: counter)
        ).bytes
    }

    func metadata(
        pool: [UInt8] = samplePoolID, kind: MetadataKind = .volumeTreeNode, object: UInt32 = 4, level: UInt16 = 1,
        first: UInt64 = 1000, salt: SessionSalt? = nil, counter: UInt64 = 17
    ) -> [UInt8] {
        AssociatedData.metadata(
            pool: pool, kind: kind, object: object, level: level, firstIndex: first, salt: salt ?? self.salt,
            counter: NonceCounter(rawValue: counter)
        ).bytes
    }

    func flipped(_ bytes: [UInt8], _ index: Int) -> [UInt8] {
        var copy = bytes
        copy[index] ^= 1
        return copy
    }

    @Test func layout() {
        let bytes = data()
        #expect(bytes.count == 56)
        #expect(Array(bytes[0..<4]) == Array("BKD1".utf8))
        #expect(Array(bytes[4..<20]) == samplePoolID)
        #expect(littleEndian(UInt32.self, bytes, at: 20) == 4)
        #expect(littleEndian(UInt64.self, bytes, at: 24) == 1000)
        #expect(Array(bytes[32..<48]) == salt.bytes)
        #expect(littleEndian(UInt64.self, bytes, at: 48) == 17)
        let meta = metadata()
        #expect(meta.count == 60)
        #expect(Array(meta[0..<4]) == Array("BKM1".utf8))
        #expect(Array(meta[4..<20]) == samplePoolID)
        #expect(littleEndian(UInt16.self, meta, at: 20) == MetadataKind.volumeTreeNode.rawValue)
        #expect(littleEndian(UInt32.self, meta, at: 22) == 4)
        #expect(littleEndian(UInt16.self, meta, at: 26) == 1)
        #expect(littleEndian(UInt64.self, meta, at: 28) == 1000)
        #expect(Array(meta[36..<52]) == salt.bytes)
        #expect(littleEndian(UInt64.self, meta, at: 52) == 17)
    }

    /// Changing any one field of a data block's identity changes the bytes.
    @Test func dataFieldsAreDistinct() {
        let base = data()
        var variants: [[UInt8]] = [base]
        for index in 0..<16 { variants.append(data(pool: flipped(samplePoolID, index))) }
        variants += [data(volume: 5), data(volume: 4 << 8), data(block: 1001), data(block: 1000 << 32)]
        for index in 0..<16 { variants.append(data(salt: SessionSalt(bytes: flipped(salt.bytes, index)))) }
        variants += [data(counter: 18), data(counter: 17 << 40)]
        #expect(Set(variants).count == variants.count)
    }

    @Test func metadataFieldsAreDistinct() {
        var variants: [[UInt8]] = [metadata()]
        for index in 0..<16 { variants.append(metadata(pool: flipped(samplePoolID, index))) }
        for kind in [MetadataKind.poolObject, .volumeTable, .spaceMapNode, .spaceMapBitmap, .log] {
            variants.append(metadata(kind: kind))
        }
        variants += [metadata(object: 5), metadata(object: 4 << 24), metadata(level: 2), metadata(level: 0), metadata(first: 1064)]
        variants += [metadata(first: 1000 << 40)]
        for index in 0..<16 { variants.append(metadata(salt: SessionSalt(bytes: flipped(salt.bytes, index)))) }
        variants += [metadata(counter: 16), metadata(counter: 17 | 1 << 63)]
        #expect(Set(variants).count == variants.count)
    }

    /// A data block's associated data can never equal a metadata block's.
    @Test func dataAndMetadataNeverCollide() {
        #expect(data() != metadata())
        #expect(data().count != metadata().count)
        #expect(Array(data()[0..<4]) != Array(metadata()[0..<4]))
    }

    @Test func kindsAreDistinct() {
        let kinds: [MetadataKind] = [.poolObject, .volumeTable, .volumeTreeNode, .spaceMapNode, .spaceMapBitmap, .log]
        #expect(Set(kinds.map(\.rawValue)).count == kinds.count)
        #expect(Set(kinds.map(\.description)).count == kinds.count)
    }
}
