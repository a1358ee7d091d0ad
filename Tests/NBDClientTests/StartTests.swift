import BlockDevice
import Foundation
import NBDClient
import NBDProtocol
import Sockets
import TestSupport
import Testing

/// Collects the calls of one batch's completion, counting them.
final class CompletionRecorder: Sendable {
    private let calls = Locked<[[Result<Void, NBDClientError>]]>([])
    private let signal = DispatchSemaphore(value: 0)

    var completion: @Sendable ([Result<Void, NBDClientError>]) -> Void {
        { [calls, signal] results in
            calls.withLock { $0.append(results) }
            signal.signal()
        }
    }

    /// The results of the first call, or nil if none came within `timeout` seconds.
    func wait(timeout: Double) -> [Result<Void, NBDClientError>]? {
        guard signal.wait(timeout: .now() + timeout) == .success else { return nil }
        return calls.value.first
    }

    var count: Int { calls.value.count }

    /// The completion `NBDConnection.start` takes.
    var batchCompletion: @Sendable (BatchResults) -> Void {
        let completion = self.completion
        return { results in completion(Array(results)) }
    }
}

extension Result where Success == Void {
    var failure: Failure? {
        if case .failure(let error) = self { error } else { nil }
    }
}

/// Owned buffers for a batch, freed by the test once its completion ran.
final class Buffers {
    private(set) var all: [UnsafeMutableRawBufferPointer] = []

    func make(_ bytes: [UInt8]) -> UnsafeMutableRawBufferPointer {
        let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: bytes.count, alignment: 16)
        buffer.copyBytes(from: bytes)
        all.append(buffer)
        return buffer
    }

    func make(count: Int, fill: UInt8 = 0xAA) -> UnsafeMutableRawBufferPointer {
        make([UInt8](repeating: fill, count: count))
    }

    deinit { for buffer in all { buffer.deallocate() } }
}

/// `RemoteBlockDevice.start`: batches completed on the reader thread, against nbdkit.
@Suite("RemoteBlockDevice.start against nbdkit", .enabled(if: NBDKit.shouldRun), .serialized)
struct StartTests {
    let directory: TemporaryDirectory

    init() throws {
        directory = try TemporaryDirectory()
    }

    var socket: String { directory.file("sock") }

    /// nbdkit accepting at most 64 KiB per request, so larger operations are split.
    func start(_ plugin: [String] = ["memory", "16M"]) throws -> NBDKit {
        try NBDKit(socketPath: socket, ["--filter=blocksize-policy"] + plugin + ["blocksize-maximum=65536", "blocksize-error-policy=error"])
    }

    @Test func writesAndReadsRoundTripInBatchesWithSplitPieces() throws {
        let server = try start()
        let device = try RemoteBlockDevice(connectingTo: server.address, options: .forTests())
        #expect(device.chunkSize == 65536)
        let buffers = Buffers()
        // 32 blocks of 4 KiB, one of 1 MiB + 512 (17 pieces), a flush.
        var expected: [(UInt64, [UInt8])] = (0..<32).map { (UInt64($0) * 8192, randomBytes(4096)) }
        expected.append((1 << 20, randomBytes((1 << 20) + 512)))
        let writes = expected.map { NBDOperation.write(offset: $0.0, from: UnsafeRawBufferPointer(buffers.make($0.1)), fua: false) }
        let written = CompletionRecorder()
        #expect(device.start(writes + [.flush], completion: written.completion))
        let writeResults = try #require(written.wait(timeout: 10), "the writes never completed")
        #expect(writeResults.count == writes.count + 1)
        #expect(writeResults.allSatisfy { $0.failure == nil })

        let targets = expected.map { buffers.make(count: $0.1.count) }
        let reads = zip(expected, targets).map { NBDOperation.read(offset: $0.0.0, into: $0.1) }
        let read = CompletionRecorder()
        #expect(device.start(reads, completion: read.completion))
        let readResults = try #require(read.wait(timeout: 10), "the reads never completed")
        #expect(readResults.count == reads.count)
        #expect(readResults.allSatisfy { $0.failure == nil })
        for (index, (offset, data)) in expected.enumerated() {
            #expect(Array(targets[index]) == data, "data at \(offset) differs")
        }
        // Exactly once, also a while later.
        Thread.sleep(forTimeInterval: 0.2)
        #expect(written.count == 1)
        #expect(read.count == 1)
    }

    /// `startLentWrites` splices payloads past the inline limit into the
    /// socket by reference: the stream must stay in step with the copied
    /// requests and headers around them, from several threads at once.
    @Test func lentWritesInterleavedWithCopiedOnesFromSeveralThreadsRoundTrip() throws {
        let server = try NBDKit(socketPath: socket, ["memory", "16M"])
        let device = try RemoteBlockDevice(connectingTo: server.address, options: .forTests())
        #expect(device.chunkSize >= 1 << 20)
        let errors = Locked<[String]>([])
        let finished = runConcurrently(4, timeout: 60) { thread in
            // 4 MiB per thread.
            let base = UInt64(thread) << 22
            for round in 0..<12 {
                let buffers = Buffers()
                let sizes = [(1 << 20) + 4096, 4096, 200_704, 65536, 69632]
                var offset = base
                var pieces: [(UInt64, [UInt8])] = []
                for size in sizes {
                    pieces.append((offset, randomBytes(size)))
                    offset += UInt64(size)
                }
                let sources = pieces.map { buffers.make($0.1) }
                let written = OutcomeRecorder()
                let writePieces: [WritePiece] = zip(pieces, sources).map { ($0.0.0, UnsafeRawBufferPointer($0.1)) }
                let started =
                    round % 2 == 0
                    ? device.startLentWrites(writePieces, fua: false, completion: written.completion)
                    : device.startWrites(writePieces, fua: false, completion: written.completion)
                guard started, case .done? = written.wait(timeout: 15) else {
                    errors.withLock { $0.append("thread \(thread) round \(round): the write batch failed") }
                    continue
                }
                for (start, data) in pieces where (try? device.read(at: start, count: data.count)) != data {
                    errors.withLock { $0.append("thread \(thread) round \(round): \(data.count) bytes at \(start) differ") }
                }
            }
        }
        #expect(finished)
        #expect(errors.value == [])
    }

    @Test func anOperationOutsideTheExportFailsAloneAndAnEmptyBatchCompletesAtOnce() throws {
        let server = try start()
        let device = try RemoteBlockDevice(connectingTo: server.address, options: .forTests())
        let buffers = Buffers()
        let data = randomBytes(4096)
        let outside = buffers.make(count: 8192)
        let recorder = CompletionRecorder()
        let operations: [NBDOperation] = [
            .write(offset: 0, from: UnsafeRawBufferPointer(buffers.make(data)), fua: true),
            .read(offset: device.size - 4096, into: outside),
        ]
        #expect(device.start(operations, completion: recorder.completion))
        let results = try #require(recorder.wait(timeout: 10))
        #expect(results.count == 2)
        #expect(results[0].failure == nil)
        guard case .invalidRequest = results[1].failure else {
            Issue.record("expected invalidRequest, got \(results[1])")
            return
        }
        #expect(outside.allSatisfy { $0 == 0xAA }, "nothing may be written into a refused read's buffer")
        #expect(try device.read(at: 0, count: 4096) == data)

        // Nothing to send: the completion runs before start returns.
        let empty = CompletionRecorder()
        #expect(device.start([.read(offset: device.size, into: outside)], completion: empty.completion))
        #expect(empty.count == 1)
        guard case .invalidRequest = empty.wait(timeout: 0)?.first?.failure else {
            Issue.record("expected invalidRequest")
            return
        }
    }

    @Test func synchronousAndStartedBatchesShareTheConnection() throws {
        let server = try start()
        let device = try RemoteBlockDevice(connectingTo: server.address, options: .forTests())
        let errors = Locked<[String]>([])
        let finished = runConcurrently(8, timeout: 60) { thread in
            // 2 MiB per thread: no thread's 200 kB write reaches another's range.
            let base = UInt64(thread) << 21
            for round in 0..<30 {
                let offset = base + UInt64(round % 8) * 65536
                let data = randomBytes(round % 3 == 0 ? 200_000 : 4096)
                if thread % 2 == 0 {
                    device.writeAndReadBack(data, at: offset, label: "thread \(thread) round \(round) (synchronous)", errors: errors)
                    continue
                }
                let buffers = Buffers()
                let source = buffers.make(data)
                let target = buffers.make(count: data.count)
                let written = CompletionRecorder()
                let read = CompletionRecorder()
                guard device.start([.write(offset: offset, from: UnsafeRawBufferPointer(source), fua: false)], completion: written.completion),
                    written.wait(timeout: 10)?.allSatisfy({ $0.failure == nil }) == true,
                    device.start([.read(offset: offset, into: target)], completion: read.completion),
                    read.wait(timeout: 10)?.allSatisfy({ $0.failure == nil }) == true
                else {
                    errors.withLock { $0.append("thread \(thread) round \(round): a started batch failed") }
                    continue
                }
                if Array(target) != data {
                    errors.withLock { $0.append("thread \(thread) round \(round): started data mismatch") }
                }
            }
        }
        #expect(finished)
        #expect(errors.value == [])
    }

    @Test func aServerDyingMidBatchFailsTheBatchAndTheNextSynchronousCallReconnects() throws {
        let disk = directory.file("disk")
        try ReconnectTests.makeFile(disk, size: 8 << 20)
        // Reads take a second, so the batch is inside nbdkit when it is killed.
        let arguments = ["--filter=delay", "file", disk, "delay-read=1"]
        var server = try NBDKit(socketPath: socket, arguments)
        let device = try RemoteBlockDevice(connectingTo: server.address, options: .forTests())
        let data = randomBytes(8192)
        try device.write(at: 0, bytes: data, fua: true)

        let buffers = Buffers()
        let recorder = CompletionRecorder()
        let reads = (0..<4).map { NBDOperation.read(offset: UInt64($0) * 4096, into: buffers.make(count: 4096)) }
        #expect(device.start(reads, completion: recorder.completion))
        Thread.sleep(forTimeInterval: 0.3)
        server.kill()
        let results = try #require(recorder.wait(timeout: 5), "the batch never completed")
        #expect(results.count == 4)
        for result in results {
            guard case .connectionLost = result.failure else {
                Issue.record("expected connectionLost, got \(result)")
                continue
            }
        }
        // The device knows: no connection to start on until a synchronous call reconnects.
        let refused = CompletionRecorder()
        #expect(!device.start([.flush], completion: refused.completion))
        Thread.sleep(forTimeInterval: 0.2)
        #expect(refused.count == 0)

        server = try NBDKit(socketPath: socket, arguments)
        #expect(try device.read(at: 0, count: data.count) == data)
        #expect(device.sessionEpoch == 1)
        let again = CompletionRecorder()
        let target = buffers.make(count: 8192)
        #expect(device.start([.read(offset: 0, into: target)], completion: again.completion))
        #expect(again.wait(timeout: 10)?.first?.failure == nil)
        #expect(Array(target) == data)
        Thread.sleep(forTimeInterval: 0.1)
        #expect(recorder.count == 1)
        withExtendedLifetime(server) {}
    }

    @Test func startReturnsFalseWhileReconnectingAndAfterClose() throws {
        var server = try start()
        let device = try RemoteBlockDevice(connectingTo: server.address, options: .forTests(retryWindow: 5))
        server.kill()
        // A synchronous read notices the loss and reconnects, failing, with
        // backoff, until the server is back.
        let reader = Background { () -> Bool in (try? device.read(at: 0, count: 512)) != nil }
        // A start before the loss is noticed goes out on the dying connection
        // and completes with its failure; only a refused start must never complete.
        var refused = CompletionRecorder()
        #expect(
            eventually(timeout: 5) {
                let attempt = CompletionRecorder()
                guard !device.start([.flush], completion: attempt.completion) else { return false }
                refused = attempt
                return true
            })
        server = try start()
        #expect(reader.wait(timeout: 10) == true)
        let started = CompletionRecorder()
        #expect(device.start([.flush], completion: started.completion))
        #expect(started.wait(timeout: 10)?.first?.failure == nil)
        #expect(refused.count == 0)

        device.close()
        #expect(!device.start([.flush], completion: refused.completion))
        Thread.sleep(forTimeInterval: 0.1)
        #expect(refused.count == 0)
    }
}

/// `RemoteBlockDevice.start` against servers that never answer.
@Suite("RemoteBlockDevice.start against hostile servers")
struct HostileStartTests {
    /// Swallows every request and answers nothing.
    static func silentServer() throws -> ScriptedServer {
        try ScriptedServer { session in
            while let request = session.nextRequest() {
                if request.header.command == .disconnect { return }
            }
        }
    }

    @Test func aServerThatNeverAnswersTimesTheBatchOut() throws {
        let server = try Self.silentServer()
        defer { server.close() }
        let device = try RemoteBlockDevice(connectingTo: server.address, options: .forTests(requestTimeout: 0.5))
        let buffers = Buffers()
        let recorder = CompletionRecorder()
        let begin = Date()
        #expect(device.start([.read(offset: 0, into: buffers.make(count: 4096)), .flush], completion: recorder.completion))
        let results = try #require(recorder.wait(timeout: 5), "the batch never timed out")
        let elapsed = Date().timeIntervalSince(begin)
        #expect(elapsed >= 0.5 && elapsed < 2, "timed out after \(elapsed) s")
        #expect(results.map(\.failure) == [.timedOut(.reply), .timedOut(.reply)])
        Thread.sleep(forTimeInterval: 0.2)
        #expect(recorder.count == 1)
    }

    @Test func closingTheDeviceCompletesPendingBatchesOnce() throws {
        let server = try Self.silentServer()
        defer { server.close() }
        let device = try RemoteBlockDevice(connectingTo: server.address, options: .forTests(requestTimeout: 30))
        let buffers = Buffers()
        let recorders = (0..<3).map { _ in CompletionRecorder() }
        for recorder in recorders {
            #expect(device.start([.read(offset: 0, into: buffers.make(count: 65536))], completion: recorder.completion))
        }
        device.close()
        for recorder in recorders {
            #expect(recorder.wait(timeout: 2)?.map(\.failure) == [.closed])
        }
        Thread.sleep(forTimeInterval: 0.2)
        #expect(recorders.map(\.count) == [1, 1, 1])
    }
}
