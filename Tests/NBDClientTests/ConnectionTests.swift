import BlockDevice
import Foundation
import NBDClient
import NBDProtocol
import Sockets
import TestSupport
import Testing

/// NBDConnection against a real, honest server: nbdkit's memory plugin.
@Suite("NBDConnection against nbdkit", .enabled(if: NBDKit.shouldRun))
struct ConnectionTests {
    let directory: TemporaryDirectory

    init() throws {
        directory = try TemporaryDirectory()
    }

    func start(_ arguments: [String] = ["memory", "64M"]) throws -> NBDKit {
        try NBDKit(socketPath: directory.file("sock"), arguments)
    }

    static let options = NBDConnection.Options(handshakeTimeout: 5, requestTimeout: 20)

    @Test func handshakeNegotiatesStructuredRepliesAndReportsTheExport() throws {
        let server = try start()
        let connection = try NBDConnection.connect(to: server.address, options: Self.options)
        #expect(connection.size == 64 << 20)
        #expect(connection.session.structuredReplies)
        #expect(connection.flags.isSuperset(of: [.hasFlags, .sendFlush, .sendFUA, .sendTrim, .sendWriteZeroes, .sendFastZero]))
        #expect(!connection.flags.contains(.readOnly))
        #expect(connection.maxPayload == NBDLimits.maxPayload)
        #expect(connection.isUsable)
        #expect(connection.failure == nil)
    }

    @Test func simpleRepliesWorkWhenStructuredRepliesAreNotAsked() throws {
        let server = try start()
        var options = Self.options
        options.structuredReplies = false
        let connection = try NBDConnection.connect(to: server.address, options: options)
        #expect(!connection.session.structuredReplies)
        let data = randomBytes(100_000)
        try connection.write(at: 777, bytes: data)
        #expect(try connection.read(at: 777, length: data.count) == data)
        // A simple error reply carries the code but no message.
        #expect(throws: NBDClientError.server(.invalid, message: "")) {
            try connection.read(at: connection.size - 10, length: 20)
        }
    }

    @Test func writtenDataReadsBackAndUnwrittenRangesReadAsZeroes() throws {
        let server = try start()
        let connection = try NBDConnection.connect(to: server.address, options: Self.options)
        let data = randomBytes(1 << 20)
        try connection.write(at: 12345, bytes: data)
        #expect(try connection.read(at: 12345, length: data.count) == data)
        // Never written: whatever the buffer held before must be replaced by zeroes.
        var buffer = [UInt8](repeating: 0xAA, count: 300_000)
        try buffer.withUnsafeMutableBytes { try connection.read(at: 32 << 20, into: $0) }
        #expect(buffer.allSatisfy { $0 == 0 })
    }

    @Test func manyThreadsPipelineRequestsOnOneConnection() throws {
        let server = try start()
        let connection = try NBDConnection.connect(to: server.address, options: Self.options)
        let mismatches = Locked(0)
        let failures = Locked<[NBDClientError]>([])
        let finished = runConcurrently(16, timeout: 60) { thread in
            for round in 0..<20 {
                let offset = UInt64(thread) << 20 + UInt64(round) * 40_000
                let data = randomBytes(Int.random(in: 1...40_000))
                do {
                    try connection.write(at: offset, bytes: data)
                    if try connection.read(at: offset, length: data.count) != data { mismatches.withLock { $0 += 1 } }
                } catch let error as NBDClientError {
                    failures.withLock { $0.append(error) }
                } catch {}
            }
        }
        #expect(finished)
        #expect(failures.value.isEmpty)
        #expect(mismatches.value == 0)
        #expect(connection.isUsable)
    }

    @Test func concurrentRequestsAndBatchesOverlapOnTheWire() throws {
        // Every read takes nbdkit 300 ms: one at a time, 16 would take 4.8 s.
        let server = try start(["--filter=delay", "memory", "1M", "delay-read=300ms"])
        let connection = try NBDConnection.connect(to: server.address, options: Self.options)
        var start = Date()
        let failures = Locked(0)
        #expect(runConcurrently(16, timeout: 30) { thread in
            if (try? connection.read(at: UInt64(thread) * 4096, length: 4096)) == nil { failures.withLock { $0 += 1 } }
        })
        #expect(failures.value == 0)
        #expect(Date().timeIntervalSince(start) < 2.4)

        start = Date()
        var buffers = [[UInt8]](repeating: [UInt8](repeating: 1, count: 4096), count: 16)
        let results = buffers.withUnsafeMutableBufferPointers { targets in
            connection.perform(targets.enumerated().map { .read(offset: UInt64($0.offset) * 4096, into: $0.element) })
        }
        #expect(Date().timeIntervalSince(start) < 2.4)
        #expect(results.allSatisfy { (try? $0.get()) != nil })
        #expect(buffers.allSatisfy { $0.allSatisfy { $0 == 0 } })
    }

    @Test func batchesArePipelinedAndAnsweredInOrder() throws {
        let server = try start()
        let connection = try NBDConnection.connect(to: server.address, options: Self.options)
        let count = 256
        let blocks = (0..<count).map { _ in randomBytes(4096) }
        // Scattered, descending offsets: the order of results must follow the batch, not the disk.
        let offsets = (0..<count).map { UInt64(count - $0) * 65536 + 512 }
        let writeResults = blocks.withUnsafeBufferPointers { buffers in
            connection.perform(zip(offsets, buffers).map { .write(offset: $0, from: $1, fua: false) })
        }
        #expect(writeResults.count == count)
        #expect(writeResults.allSatisfy { (try? $0.get()) != nil })

        var readBack = [[UInt8]](repeating: [UInt8](repeating: 0, count: 4096), count: count)
        let readResults = readBack.withUnsafeMutableBufferPointers { buffers in
            connection.perform(zip(offsets, buffers).map { .read(offset: $0, into: $1) } + [.flush])
        }
        #expect(readResults.count == count + 1)
        #expect(readResults.allSatisfy { (try? $0.get()) != nil })
        #expect(readBack == blocks)
    }

    @Test func oneBadRequestInABatchFailsAloneAndTheRestSucceed() throws {
        let server = try start()
        let connection = try NBDConnection.connect(to: server.address, options: Self.options)
        let data = randomBytes(4096)
        let results = data.withUnsafeBytes { buffer in
            connection.perform([
                .write(offset: 0, from: buffer, fua: false),
                .write(offset: connection.size, from: buffer, fua: false),  // past the end
                .write(offset: 8192, from: buffer, fua: true),
            ])
        }
        #expect((try? results[0].get()) != nil)
        #expect(throws: NBDClientError.self) { try results[1].get() }
        if case .failure(.server(let code, _)) = results[1] { #expect(code == .noSpace) } else { Issue.record("expected ENOSPC, got \(results[1])") }
        #expect((try? results[2].get()) != nil)
        #expect(connection.isUsable)
    }

    @Test func flushFUATrimAndWriteZeroes() throws {
        let server = try start()
        let connection = try NBDConnection.connect(to: server.address, options: Self.options)
        let data = randomBytes(256 * 1024)
        try connection.write(at: 0, bytes: data, fua: true)
        try connection.flush()
        #expect(try connection.read(at: 0, length: data.count) == data)

        try connection.writeZeroes(at: 4096, length: 8192)
        try connection.writeZeroes(at: 65536, length: 4096, flags: [.noHole, .fua])
        try connection.writeZeroes(at: 131072, length: 4096, flags: [.fast])
        var expected = data
        for range in [4096..<12288, 65536..<69632, 131072..<135168] {
            expected.replaceSubrange(range, with: repeatElement(0, count: range.count))
        }
        #expect(try connection.read(at: 0, length: data.count) == expected)

        try connection.trim(at: 0, length: 65536, fua: true)
        // Trimmed contents are unspecified; the range must still be readable.
        #expect(try connection.read(at: 0, length: 65536).count == 65536)
    }

    @Test func requestsTheProtocolForbidsAreRejectedLocally() throws {
        let server = try start()
        let connection = try NBDConnection.connect(to: server.address, options: Self.options)
        var big = [UInt8](repeating: 0, count: Int(NBDLimits.maxPayload) + 1)
        let result = big.withUnsafeMutableBytes { connection.perform([.read(offset: 0, into: $0)])[0] }
        guard case .failure(.invalidRequest(let why)) = result else {
            Issue.record("expected invalidRequest, got \(result)")
            return
        }
        #expect(why.contains("maximum payload"))
        #expect(throws: NBDClientError.self) { try connection.read(at: 0, length: 0) }
        #expect(connection.isUsable)
    }

    @Test func rangesPastTheEndAreRefusedByTheServer() throws {
        let server = try start()
        let connection = try NBDConnection.connect(to: server.address, options: Self.options)
        // The connection leaves range checks to the server; nbdkit answers
        // EINVAL for reads and ENOSPC for writes past the end.
        do {
            _ = try connection.read(at: connection.size - 512, length: 1024)
            Issue.record("read past the end succeeded")
        } catch {
            guard case .server(.invalid, let message) = error else {
                Issue.record("expected EINVAL, got \(error)")
                return
            }
            _ = message
        }
        do {
            try connection.write(at: connection.size, bytes: [1, 2, 3])
            Issue.record("write past the end succeeded")
        } catch {
            guard case .server(.noSpace, _) = error else {
                Issue.record("expected ENOSPC, got \(error)")
                return
            }
        }
        #expect(connection.isUsable)
    }

    @Test func serverErrorsArePassedOnWithCodeAndMessage() throws {
        let server = try start(["--filter=error", "memory", "1M", "error-pread=EIO", "error-pread-rate=100%"])
        let connection = try NBDConnection.connect(to: server.address, options: Self.options)
        do {
            _ = try connection.read(at: 0, length: 4096)
            Issue.record("read succeeded despite the error filter")
        } catch {
            guard case .server(.ioError, _) = error else {
                Issue.record("expected EIO, got \(error)")
                return
            }
        }
        try connection.write(at: 0, bytes: [1, 2, 3])
        #expect(connection.isUsable)
    }

    @Test func blockSizeConstraintsAreHonoured() throws {
        let server = try start([
            "--filter=blocksize-policy", "memory", "1M", "blocksize-minimum=512", "blocksize-preferred=4096",
            "blocksize-maximum=65536", "blocksize-error-policy=error",
        ])
        let connection = try NBDConnection.connect(to: server.address, options: Self.options)
        #expect(connection.blockSize == BlockSizeConstraints(minimum: 512, preferred: 4096, maximum: 65536))
        #expect(connection.maxPayload == 65536)
        #expect(throws: NBDClientError.self) { try connection.read(at: 100, length: 512) }
        #expect(throws: NBDClientError.self) { try connection.read(at: 0, length: 131072) }
        let data = randomBytes(65536)
        try connection.write(at: 512, bytes: data)
        #expect(try connection.read(at: 512, length: 65536) == data)
    }

    @Test func exportsAreListed() throws {
        let server = try start([
            "--filter=exportname", "memory", "1M", "exportname-list=explicit", "exportname-strict=true",
            "exportname=alpha", "exportname=beta", "exportdesc=fixed:scratch space",
        ])
        let exports = try NBDConnection.listExports(at: server.address, timeout: 5)
        #expect(exports.map(\.name) == ["alpha", "beta"])
        #expect(exports.allSatisfy { $0.description == "scratch space" })
        let connection = try NBDConnection.connect(to: server.address, export: "beta", options: Self.options)
        #expect(connection.session.exportName == "beta")
        do {
            _ = try NBDConnection.connect(to: server.address, export: "gamma", options: Self.options)
            Issue.record("connected to an export the server does not have")
        } catch {
            guard case .handshake(.optionRefused(.go, let type, _)) = error else {
                Issue.record("expected NBD_OPT_GO to be refused, got \(error)")
                return
            }
            #expect(type.isError)
        }
    }

    @Test func closingFailsLaterRequests() throws {
        let server = try start()
        let connection = try NBDConnection.connect(to: server.address, options: Self.options)
        try connection.write(at: 0, bytes: [1])
        connection.close()
        #expect(throws: NBDClientError.closed) { try connection.read(at: 0, length: 1) }
        #expect(connection.failure == .closed)
        #expect(!connection.isUsable)
    }

    @Test func connectingToNothingFailsWithTheSocketError() throws {
        let address = SocketAddress.unix(path: directory.file("nobody"))
        do {
            _ = try NBDConnection.connect(to: address, options: Self.options)
            Issue.record("connected to a socket nobody listens on")
        } catch {
            guard case .connect(.system(_, _, let code)) = error else {
                Issue.record("expected a connect error, got \(error)")
                return
            }
            #expect(code == ENOENT)
        }
    }
}

extension Array where Element == [UInt8] {
    /// Calls `body` with a raw buffer for every element, all valid at once.
    func withUnsafeBufferPointers<R>(_ body: ([UnsafeRawBufferPointer]) -> R) -> R {
        func nest(_ index: Int, _ collected: [UnsafeRawBufferPointer]) -> R {
            guard index < count else { return body(collected) }
            return self[index].withUnsafeBytes { nest(index + 1, collected + [$0]) }
        }
        return nest(0, [])
    }

    mutating func withUnsafeMutableBufferPointers<R>(_ body: ([UnsafeMutableRawBufferPointer]) -> R) -> R {
        // Contiguous storage: one allocation, split into element buffers.
        let sizes = map(\.count)
        let total = sizes.reduce(0, +)
        let storage = UnsafeMutableRawBufferPointer.allocate(byteCount: Swift.max(total, 1), alignment: 16)
        defer { storage.deallocate() }
        var buffers: [UnsafeMutableRawBufferPointer] = []
        var start = 0
        for size in sizes {
            buffers.append(UnsafeMutableRawBufferPointer(rebasing: storage[start..<(start + size)]))
            start += size
        }
        let result = body(buffers)
        for (index, buffer) in buffers.enumerated() { self[index] = [UInt8](buffer) }
        return result
    }
}
