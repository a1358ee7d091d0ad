import Foundation
import Testing

/// Stock NBD clients as the crypt domain's consumers: every byte they write
/// is sealed by bulkhead-cryptd and stored by bulkhead-storaged.
@Suite("stock clients through the crypt domain") struct ConsumerToolTests {
    @Test("qemu-img convert a raw image into vm1 and back out; qemu-img compare both ways")
    func qemuImgRoundTrip() throws {
        let chain = try Chain()
        defer { chain.shutdown() }
        let size = 64 * mebibyte
        // Random extents with holes between them, so convert sends both
        // writes and zeroes; vm1 is dirtied first so zeroes must really land.
        let source = chain.scratch.file("source.raw")
        try makeSparseFile(source, size: size)
        let handle = try #require(FileHandle(forWritingAtPath: source))
        for (offset, length) in [(0, 20 * mebibyte), (24 * mebibyte + 12_345, 3 * mebibyte), (40 * mebibyte, 8 * mebibyte), (size - 4096, 4096)] {
            try handle.seek(toOffset: UInt64(offset))
            try handle.write(contentsOf: randomData(length))
        }
        try handle.close()
        let dirty = try qemuIO(chain.uri("vm1"), ["write -P 0xee 20M 8M", "write -P 0xdd 60M 1M"])
        #expect(dirty.succeeded, "\(dirty)\n\(chain.logs)")

        let into = try run(["qemu-img", "convert", "-n", "-f", "raw", "-O", "raw", source, chain.uri("vm1")], timeout: 120)
        #expect(into.succeeded, "\(into)\n\(chain.logs)")
        let forward = try run(["qemu-img", "compare", "-f", "raw", "-F", "raw", source, chain.uri("vm1")], timeout: 120)
        #expect(forward.succeeded && forward.output.contains("Images are identical"), "\(forward)\n\(chain.logs)")
        let backward = try run(["qemu-img", "compare", "-f", "raw", "-F", "raw", chain.uri("vm1"), source], timeout: 120)
        #expect(backward.succeeded && backward.output.contains("Images are identical"), "\(backward)\n\(chain.logs)")

        let copy = chain.scratch.file("copy.raw")
        let out = try run(["qemu-img", "convert", "-f", "raw", "-O", "raw", chain.uri("vm1"), copy], timeout: 120)
        #expect(out.succeeded, "\(out)\n\(chain.logs)")
        let (original, returned) = (try readFile(source), try readFile(copy))
        #expect(returned.count == size)
        #expect(firstDifference(original, returned) == nil, "the image read back out of vm1 differs")
        let local = try run(["qemu-img", "compare", "-s", "-f", "raw", "-F", "raw", source, copy], timeout: 60)
        #expect(local.succeeded, "\(local)")

        // The comparison can fail: one changed byte in vm1 is reported.
        let poke = try qemuIO(chain.uri("vm1"), ["write -P 0x01 33M 1"])
        #expect(poke.succeeded, "\(poke)")
        let differs = try run(["qemu-img", "compare", "-f", "raw", "-F", "raw", source, chain.uri("vm1")], timeout: 120)
        #expect(differs.status == 1 && differs.output.contains("Content mismatch at offset 34603008"), "\(differs)")
    }

    @Test("nbdcopy a random image into vm2 and out again, byte for byte (multi-connection)")
    func nbdcopyRoundTrip() throws {
        let chain = try Chain()
        defer { chain.shutdown() }
        let data = randomData(64 * mebibyte)
        let source = chain.scratch.file("source.raw")
        try writeFile(source, data)
        let into = try run(["nbdcopy", "--flush", "--connections=4", source, chain.uri("vm2")], timeout: 120)
        #expect(into.succeeded, "\(into)\n\(chain.logs)")
        let copy = chain.scratch.file("copy.raw")
        let out = try run(["nbdcopy", "--connections=4", chain.uri("vm2"), copy], timeout: 120)
        #expect(out.succeeded, "\(out)\n\(chain.logs)")
        let returned = try readFile(copy)
        #expect(returned.count == data.count)
        #expect(firstDifference(returned, data) == nil, "vm2 differs from what nbdcopy wrote, first at byte \(firstDifference(returned, data) ?? -1)")
    }

    @Test("fio --ioengine=nbd: 4k random writes and 64k random read/write, crc32c verified")
    func fioVerify() throws {
        let chain = try Chain()
        defer { chain.shutdown() }
        let passes: [(label: String, options: [String])] = [
            ("4k randwrite", ["--rw=randwrite", "--bs=4k", "--size=32M", "--offset=0"]),
            ("64k randrw", ["--rw=randrw", "--bs=64k", "--size=32M", "--offset=32M"]),
        ]
        for pass in passes {
            let result = try run([
                "fio", "--name=chain", "--ioengine=nbd", "--uri=" + chain.uri("vm1"), "--iodepth=8",
                "--verify=crc32c", "--do_verify=1", "--verify_fatal=1", "--verify_state_save=0", "--randseed=3141",
            ] + pass.options, timeout: 150)
            #expect(result.succeeded, "\(pass.label): \(result)\n\(chain.logs)")
            let verifyLines = result.output.split(separator: "\n").filter {
                $0.contains("verify:") || $0.contains("bad magic") || $0.contains("verify failed")
            }
            #expect(verifyLines.isEmpty, "\(pass.label): \(verifyLines)")
            #expect(result.output.contains("err= 0"), "\(pass.label): \(result)")
            #expect(result.output.contains("read: IOPS="), "\(pass.label): no verify reads happened: \(result)")
        }
    }

    @Test("nbdinfo --list on each volume socket shows that volume alone, with its size, over simple replies")
    func nbdinfoList() throws {
        let chain = try Chain(volumes: [
            VolumeSpec(name: "vm1", size: 64 * mebibyte), VolumeSpec(name: "vm2", size: 40 * mebibyte + 4096),
        ])
        defer { chain.shutdown() }
        for volume in chain.volumes {
            let result = try run(["nbdinfo", "--json", "--list", "nbd+unix:///?socket=" + chain.volumeSocket(volume.name)])
            #expect(result.succeeded, "\(result)\n\(chain.logs)")
            let json = try JSONSerialization.jsonObject(with: Data(result.output.utf8)) as? [String: Any]
            let exports = json?["exports"] as? [[String: Any]] ?? []
            // NBDServerConfiguration.offersStructuredReplies: a volume declines them.
            #expect(json?["structured"] as? Bool == false, "\(result.output)")
            #expect(exports.map { $0["export-name"] as? String } == [volume.name], "\(result.output)")
            #expect((exports.first?["export-size"] as? NSNumber)?.intValue == volume.size, "\(result.output)")
            let direct = try run(["nbdinfo", "--size", chain.uri(volume.name)])
            #expect(direct.output.trimmingCharacters(in: .whitespacesAndNewlines) == "\(volume.size)", "\(direct)")
        }
    }
}
