import PoolFormat
import Testing

/// Hostile bytes never trap a decoder: random blocks and valid blocks with
/// random damage either decode or throw FormatError.
@Suite struct DecoderRobustnessTests {
    static func decodeAll(_ block: [UInt8]) -> Int {
        var decoded = 0
        if (try? Superblock.decode(block)) != nil { decoded += 1 }
        if (try? PoolHeader.decode(block)) != nil { decoded += 1 }
        if (try? KeyslotBlock.decode(block)) != nil { decoded += 1 }
        if (try? TreeNode(decoding: block)) != nil { decoded += 1 }
        if (try? LogBlock(decoding: block)) != nil { decoded += 1 }
        if (try? PoolObject(decoding: block)) != nil { decoded += 1 }
        if (try? VolumeTableBlock(decoding: block)) != nil { decoded += 1 }
        if block.count >= 64, (try? BlockPointer(decoding: Array(block[0..<64]))) != nil { decoded += 1 }
        return decoded
    }

    @Test func randomBlocks() {
        for seed in 0..<200 { _ = Self.decodeAll(patterned(4096, seed: UInt64(seed))) }
        for size in wrongBlockSizes { #expect(Self.decodeAll([UInt8](repeating: 0xFF, count: size)) == 0) }
    }

    @Test func damagedValidBlocks() {
        let valid: [[UInt8]] = [
            Superblock(
                poolID: samplePoolID, generation: 9, anchorEpoch: 0, checkpointRoot: samplePointer(1), logHead: .null,
                logRecordCount: 0, logBlockCount: 0
            ).block(mac: patterned(32, seed: 1)),
            PoolHeader(poolID: samplePoolID, blockCount: 9999, updateCounter: 1, keyslotDigests: (0..<15).map { patterned(32, seed: UInt64($0)) })
                .block(mac: patterned(32, seed: 2)),
            KeyslotBlock(
                type: .passphrase, slot: 0, salt: patterned(32, seed: 1), kdfLog2N: 15, kdfR: 8, kdfP: 1, nonce: patterned(12, seed: 2),
                sealedKey: patterned(32, seed: 3), tag: patterned(16, seed: 4)
            ).encoded(),
            TreeNode(children: (0..<64).map { samplePointer(UInt64($0)) }).encoded(),
            LogBlock(
                sequence: 3, previous: samplePointer(1),
                records: (0..<50).map {
                    $0 % 2 == 0
                        ? .map(volume: VolumeID(rawValue: 1), block: LogicalBlock(UInt64($0)), pointer: samplePointer(UInt64($0)))
                        : .unmap(volume: VolumeID(rawValue: 2), start: LogicalBlock(UInt64($0)), count: 3)
                }
            ).encoded(),
            PoolObject(
                blockCount: 5000, spaceMapDepth: 1, spaceMapRoot: samplePointer(1), volumeTable: (0..<32).map { samplePointer(UInt64($0)) },
                nextVolumeID: VolumeID(rawValue: 2)
            ).encoded(),
            VolumeTableBlock(
                volumes: (1...16).map {
                    VolumeRecord(
                        id: VolumeID(rawValue: UInt32($0)), name: "volume-\($0)", size: 1 << 20, depth: 2, root: samplePointer(UInt64($0)),
                        key: patterned(32, seed: UInt64($0)))
                }
            ).encoded(),
        ]
        var noise = patterned(100_000, seed: 77)
        var cursor = 0
        func next() -> Int {
            cursor = (cursor + 1) % noise.count
            return Int(noise[cursor])
        }
        for block in valid {
            #expect(Self.decodeAll(block) >= 1)
            for _ in 0..<300 {
                var damaged = block
                for _ in 0...(next() % 4) {
                    // Damage the first 600 bytes more often: that is where the fields are.
                    let offset = next() % 2 == 0 ? (next() << 8 | next()) % 600 : (next() << 8 | next()) % 4096
                    damaged[offset] = UInt8(next())
                }
                _ = Self.decodeAll(damaged)
            }
        }
        noise.removeAll()
    }
}
