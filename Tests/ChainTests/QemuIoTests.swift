import Foundation
import TestSupport
import Testing

/// Requests that do not line up with the pool's 4 KiB blocks, and the
/// requests that write no data (NBD_CMD_TRIM, NBD_CMD_WRITE_ZEROES), checked
/// against a model of what the volume must hold.
@Suite("qemu-io through the crypt domain") struct QemuIoTests {
    /// A byte-for-byte model of the start of a volume.
    struct Model {
        var bytes: Data

        mutating func fill(_ offset: Int, _ length: Int, _ byte: UInt8) {
            bytes.replaceSubrange(offset..<(offset + length), with: Data(repeating: byte, count: length))
        }
    }

    @Test("unaligned and sub-block writes read back right, neighbours untouched")
    func unalignedWrites() throws {
        let chain = try Chain()
        defer { chain.shutdown() }
        let span = 512 * kibibyte
        var model = Model(bytes: Data(count: span))
        var commands = ["write -P 0x11 0 256k"]
        model.fill(0, 256 * kibibyte, 0x11)
        // Hand-picked edges: inside one block, across one boundary, across
        // several, a single byte at each end of a block, a block's last byte.
        for (byte, offset, length) in [
            (0x5a, 1000, 3000), (0x66, 4095, 2), (0x77, 8191, 4098), (0x12, 12288, 1), (0x13, 16383, 1),
            (0x14, 20000, 70_000), (0x15, 300_001, 9), (0x16, 262_143, 2),
        ] as [(UInt8, Int, Int)] {
            commands.append("write -P 0x\(String(byte, radix: 16)) \(offset) \(length)")
            model.fill(offset, length, byte)
        }
        let handPicked = try qemuIO(chain.uri("vm1"), commands + ["flush"])
        #expect(handPicked.succeeded, "\(handPicked)\n\(chain.logs)")
        // qemu-io's own pattern checks of some of them and their neighbours.
        let checks = try qemuIO(chain.uri("vm1"), [
            "read -P 0x11 0 1000", "read -P 0x5a 1000 3000", "read -P 0x11 4000 95", "read -P 0x66 4095 2",
            "read -P 0x77 8191 4097", "read -P 0x12 12288 1", "read -P 0x11 12289 4094", "read -P 0x13 16383 1",
        ])
        #expect(checks.succeeded, "\(checks)\n\(chain.logs)")

        // Then random ones, repeatable from the printed seed.
        let seed = freshSeed()
        var generator = SeededGenerator(seed: seed)
        var random: [String] = []
        for _ in 0..<60 {
            let length = Int.random(in: 1...9000, using: &generator)
            let offset = Int.random(in: 0...(span - length), using: &generator)
            let byte = UInt8.random(in: 1...255, using: &generator)
            random.append("write -P 0x\(String(byte, radix: 16)) \(offset) \(length)")
            model.fill(offset, length, byte)
        }
        let writes = try qemuIO(chain.uri("vm1"), random + ["flush"])
        #expect(writes.succeeded, "seed \(seed): \(writes)\n\(chain.logs)")

        let volume = try readExport(chain.uri("vm1"), in: chain.scratch)
        #expect(volume.count == 64 * mebibyte)
        let difference = firstDifference(volume.prefix(span), model.bytes)
        #expect(difference == nil, "seed \(seed): vm1 differs from the model first at byte \(difference ?? -1)\n\(chain.logs)")
        #expect(allBytes(volume, span..<volume.count, equal: 0), "bytes past the written span changed")
    }

    @Test("discard and write -z read back as zeroes; bytes outside them keep their data")
    func trimAndWriteZeroes() throws {
        let chain = try Chain()
        defer { chain.shutdown() }
        let span = 2 * mebibyte
        var model = Model(bytes: Data(repeating: 0xab, count: span))
        let commands = [
            "write -P 0xab 0 2M",
            "discard 64k 128k",  // whole blocks
            "discard 500000 100000",  // unaligned edges
            "write -z 320k 100k",  // whole blocks
            "write -z 700001 5000",  // inside two blocks
            "write -z -u 1M 256k",  // may unmap
            "write -z 1500000 1",  // one byte
            "flush",
        ]
        model.fill(64 * kibibyte, 128 * kibibyte, 0)
        let trimStart = 500_000, trimEnd = 600_000
        let firstWhole = (trimStart + 4095) / 4096 * 4096, lastWhole = trimEnd / 4096 * 4096
        model.fill(firstWhole, lastWhole - firstWhole, 0)
        // Trim may leave the partial blocks at its edges alone or zero them
        // (the spec allows either); those bytes are checked separately below.
        let eitherOldOrZero = [trimStart..<firstWhole, lastWhole..<trimEnd]
        model.fill(320 * kibibyte, 100 * kibibyte, 0)
        model.fill(700_001, 5000, 0)
        model.fill(mebibyte, 256 * kibibyte, 0)
        model.fill(1_500_000, 1, 0)

        let result = try qemuIO(chain.uri("vm1"), commands)
        #expect(result.succeeded, "\(result)\n\(chain.logs)")
        let checks = try qemuIO(chain.uri("vm1"), [
            "read -P 0 64k 128k", "read -P 0xab 0 64k", "read -P 0xab 192k 128k", "read -P 0 320k 100k", "read -P 0 700001 5000",
            "read -P 0xab 700000 1", "read -P 0xab 705001 1", "read -P 0 1M 256k", "read -P 0 1500000 1", "read -P 0xab 1499999 1",
        ])
        #expect(checks.succeeded, "\(checks)\n\(chain.logs)")

        var volume = try readExport(chain.uri("vm1"), in: chain.scratch).prefix(span)
        for range in eitherOldOrZero {
            #expect(allBytes(volume, range, equal: 0xab) || allBytes(volume, range, equal: 0), "trim edge \(range) holds neither old data nor zeroes")
            volume.replaceSubrange(range, with: model.bytes[range])
        }
        let difference = firstDifference(Data(volume), model.bytes)
        #expect(difference == nil, "vm1 differs from the model first at byte \(difference ?? -1)")
    }
}
