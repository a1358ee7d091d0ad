import BlockDevice
import NBDProtocol
import TestSupport
import Testing

@testable import NBDClient

/// The one splitting rule (`pieceCount(of:)`, `piece(_:of:)`) against an
/// nbdkit that refuses any request over 64 KiB: pieces tile each READ and
/// WRITE, and a batch mixing operations sent whole, split and empty
/// round-trips.
@Suite("RemoteBlockDevice splitting", .enabled(if: NBDKit.shouldRun))
struct RemoteBlockDeviceSplitTests {
    static let chunk = 65536
    let directory: TemporaryDirectory
    let server: NBDKit
    let device: RemoteBlockDevice

    init() throws {
        directory = try TemporaryDirectory()
        server = try NBDKit(
            socketPath: directory.file("sock"),
            [
                "--filter=blocksize-policy", "memory", "4M", "blocksize-minimum=512", "blocksize-preferred=4096",
                "blocksize-maximum=\(Self.chunk)", "blocksize-error-policy=error",
            ])
        device = try RemoteBlockDevice(connectingTo: server.address, options: .forTests())
    }

    @Test func piecesTileEachReadAndWrite() throws {
        #expect(device.chunkSize == UInt32(Self.chunk))
        let chunk = Self.chunk
        let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: 3 * chunk + 512, alignment: 16)
        defer { buffer.deallocate() }
        for count in [0, 512, chunk, chunk + 512, 3 * chunk, 3 * chunk + 512] {
            let part = UnsafeMutableRawBufferPointer(rebasing: buffer[..<count])
            for operation in [NBDOperation.read(offset: 4096, into: part), .write(offset: 4096, from: UnsafeRawBufferPointer(part), fua: true)] {
                let pieceCount = device.pieceCount(of: operation)
                #expect(pieceCount == (count + chunk - 1) / chunk, "\(count) bytes")
                var covered = 0
                for index in 0..<pieceCount {
                    let (offset, base, length, fua): (UInt64, UnsafeRawPointer?, Int, Bool)
                    switch device.piece(index, of: operation) {
                    case .read(let at, let into): (offset, base, length, fua) = (at, UnsafeRawPointer(into.baseAddress), into.count, true)
                    case .write(let at, let from, let flag): (offset, base, length, fua) = (at, from.baseAddress, from.count, flag)
                    default:
                        Issue.record("piece \(index) of \(count) bytes is another command")
                        continue
                    }
                    #expect(offset == 4096 + UInt64(covered))
                    #expect(base == UnsafeRawPointer(buffer.baseAddress! + covered))
                    #expect(length == min(chunk, count - covered))
                    #expect(fua)
                    covered += length
                }
                #expect(covered == count)
            }
        }
        // Commands without a payload go whole.
        #expect(device.pieceCount(of: .flush) == 1)
        #expect(device.pieceCount(of: .trim(offset: 0, length: 1 << 20, fua: false)) == 1)
        #expect(device.pieceCount(of: .writeZeroes(offset: 0, length: 1 << 20, flags: [])) == 1)
    }

    @Test func aBatchOfWholeSplitAndEmptyOperationsRoundTrips() throws {
        let large = randomBytes(3 * Self.chunk + 512)
        let small = randomBytes(512)
        let writes = large.withUnsafeBytes { large in
            small.withUnsafeBytes { small in
                device.perform([
                    .write(offset: 512, from: large, fua: false), .write(offset: 1 << 20, from: small, fua: false),
                    .write(offset: 2 << 20, from: UnsafeRawBufferPointer(rebasing: small[..<0]), fua: false), .flush,
                ])
            }
        }
        #expect(writes.count == 4)
        #expect(writes.allSatisfy { (try? $0.get()) != nil })
        var largeBack = [UInt8](repeating: 0, count: large.count)
        var smallBack = [UInt8](repeating: 0, count: small.count)
        let reads = largeBack.withUnsafeMutableBytes { largeBack in
            smallBack.withUnsafeMutableBytes { smallBack in
                device.perform([
                    .read(offset: 1 << 20, into: smallBack), .read(offset: 512, into: largeBack),
                    .read(offset: 0, into: UnsafeMutableRawBufferPointer(rebasing: smallBack[..<0])),
                ])
            }
        }
        #expect(reads.count == 3)
        #expect(reads.allSatisfy { (try? $0.get()) != nil })
        #expect(largeBack == large)
        #expect(smallBack == small)
    }
}
