import BlockDevice
import Foundation
import NBDClient
import NBDProtocol
import Sockets
import TestSupport
import Testing

/// Records the calls of one asynchronous completion.
final class OutcomeRecorder: Sendable {
    private let calls = Locked<[AsynchronousOutcome]>([])
    private let signal = DispatchSemaphore(value: 0)

    var completion: @Sendable (AsynchronousOutcome) -> Void {
        { [calls, signal] outcome in
            calls.withLock { $0.append(outcome) }
            signal.signal()
        }
    }

    /// The first outcome, or nil if none came within `timeout` seconds.
    func wait(timeout: Double) -> AsynchronousOutcome? {
        guard signal.wait(timeout: .now() + timeout) == .success else { return nil }
        return calls.value.first
    }

    /// The number of calls a tenth of a second from now, when a second
    /// call that was coming has come.
    func callsAfterAWhile() -> Int {
        Thread.sleep(forTimeInterval: 0.1)
        return calls.value.count
    }
}

/// The batch forms of `RemoteBlockDevice` (`startReads`, `startWrites`,
/// `read(_:)`, `write(_:)`) against a scripted server that answers nothing until it has
/// every request of the batch: a client sending the pieces one round trip
/// at a time would never complete (the server gives up after 10 s of
/// silence), so completing at all shows the pieces went out together.
@Suite("RemoteBlockDevice batches of scattered pieces")
struct ScatteredBatchTests {
    /// Scattered pieces as a fragmented volume read makes them: one,
    /// two or three blocks each, out of order on the device.
    static let spans: [(offset: UInt64, count: Int)] = [
        (40960, 4096), (8192, 8192), (200_704, 4096), (65536, 12288), (4096, 4096), (131_072, 4096), (360_448, 8192),
        (16384, 4096),
    ]

    /// The byte an honest answer fills a READ at `offset` with.
    static func fill(_ offset: UInt64) -> UInt8 { UInt8(truncatingIfNeeded: offset >> 12) &+ 1 }

    /// A server that gathers `count` requests before answering any, records
    /// their offsets, then answers them in order: a READ at an offset in
    /// `failing` with EIO, the others honestly; with `hangUp` it closes the
    /// connection instead of answering. Afterwards it serves honestly.
    static func gathering(_ count: Int, failing: Set<UInt64> = [], hangUp: Bool = false) throws -> (ScriptedServer, Locked<[UInt64]>) {
        let gathered = Locked<[UInt64]>([])
        let server = try ScriptedServer { session in
            var requests: [IncomingRequest] = []
            while requests.count < count, let request = session.nextRequest() { requests.append(request) }
            gathered.withLock { $0 = requests.map(\.header.offset) }
            if hangUp { return }
            for request in requests {
                let header = request.header
                if failing.contains(header.offset) {
                    session.send(
                        session.structured
                            ? Wire.errorChunk(cookie: header.cookie, error: .ioError, message: "scripted failure")
                            : Wire.simpleReply(cookie: header.cookie, error: NBDErrorCode.ioError.rawValue))
                } else {
                    session.answer(request, fill: fill(header.offset))
                }
            }
            session.serveHonestly()
        }
        return (server, gathered)
    }

    /// Buffers for `spans`, filled with 0xEE.
    static func buffers() -> [UnsafeMutableRawBufferPointer] {
        spans.map { span in
            let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: span.count, alignment: 64)
            buffer.initializeMemory(as: UInt8.self, repeating: 0xEE)
            return buffer
        }
    }

    static func sortedOffsets() -> [UInt64] { spans.map(\.offset).sorted() }

    /// What one test works with: a `gathering` server's record of the
    /// offsets it gathered, a device connected to that server, and buffers
    /// for `spans`.
    struct Scene {
        let gathered: Locked<[UInt64]>
        let device: RemoteBlockDevice
        let buffers: [UnsafeMutableRawBufferPointer]

        var readPieces: [ReadPiece] { zip(spans, buffers).map { ($0.offset, $1) } }
        var writePieces: [WritePiece] { zip(spans, buffers).map { ($0.offset, UnsafeRawBufferPointer($1)) } }

        /// Starts the reads of every span as one batch and waits for its
        /// completion; the recorder tells whether it came more than once.
        func startReads(sourceLocation: SourceLocation = #_sourceLocation) throws -> (AsynchronousOutcome, OutcomeRecorder) {
            let recorder = OutcomeRecorder()
            #expect(device.startReads(readPieces, completion: recorder.completion), sourceLocation: sourceLocation)
            let outcome = try #require(recorder.wait(timeout: 15), "the batch never completed", sourceLocation: sourceLocation)
            return (outcome, recorder)
        }

        /// Expects the server to have gathered every span, each once.
        func expectEverySpanGathered(sourceLocation: SourceLocation = #_sourceLocation) {
            #expect(gathered.value.sorted() == sortedOffsets(), sourceLocation: sourceLocation)
        }

        /// Expects every buffer to hold the honest answer for its span.
        func expectHonestBytes(sourceLocation: SourceLocation = #_sourceLocation) {
            for (span, buffer) in zip(spans, buffers) {
                #expect(buffer.allSatisfy { $0 == fill(span.offset) }, "piece at \(span.offset)", sourceLocation: sourceLocation)
            }
        }
    }

    /// Runs `body` on a scene over `gathering(spans.count, failing:hangUp:)`,
    /// then closes the server and frees the buffers.
    static func withScene(failing: Set<UInt64> = [], hangUp: Bool = false, _ body: (Scene) throws -> Void) throws {
        let (server, gathered) = try gathering(spans.count, failing: failing, hangUp: hangUp)
        defer { server.close() }
        let device = try RemoteBlockDevice(connectingTo: server.address, options: .forTests())
        let buffers = buffers()
        defer { for buffer in buffers { buffer.deallocate() } }
        try body(Scene(gathered: gathered, device: device, buffers: buffers))
    }

    @Test func startedReadsGoOutAsOneBatchWithOneCompletion() throws {
        try Self.withScene { scene in
            let (outcome, recorder) = try scene.startReads()
            guard case .done = outcome else {
                Issue.record("expected .done, got \(outcome)")
                return
            }
            scene.expectEverySpanGathered()
            scene.expectHonestBytes()
            #expect(recorder.callsAfterAWhile() == 1)
        }
    }

    @Test func aFailingPieceFailsTheStartedBatchOnce() throws {
        let failing = Self.spans[3].offset
        try Self.withScene(failing: [failing]) { scene in
            let (outcome, recorder) = try scene.startReads()
            guard case .failed(.io(let operation, let code)) = outcome else {
                Issue.record("expected an I/O failure, got \(outcome)")
                return
            }
            #expect(code == EIO)
            #expect(operation.contains("NBD_CMD_READ at \(failing)+\(Self.spans[3].count)"))
            #expect(scene.gathered.value.count == Self.spans.count)
            #expect(recorder.callsAfterAWhile() == 1)
            // The connection survives a server error: the next batch completes.
            guard case .done = try scene.startReads().0 else {
                Issue.record("the batch after a failure did not complete")
                return
            }
        }
    }

    @Test func aConnectionLostMidBatchAsksForTheSynchronousRedo() throws {
        try Self.withScene(hangUp: true) { scene in
            let (outcome, recorder) = try scene.startReads()
            guard case .redoSynchronously = outcome else {
                Issue.record("expected .redoSynchronously, got \(outcome)")
                return
            }
            #expect(scene.gathered.value.count == Self.spans.count)
            #expect(recorder.callsAfterAWhile() == 1)
        }
    }

    @Test func startedWritesGoOutAsOneBatch() throws {
        try Self.withScene { scene in
            let recorder = OutcomeRecorder()
            #expect(scene.device.startWrites(scene.writePieces, fua: false, completion: recorder.completion))
            guard case .done = try #require(recorder.wait(timeout: 15), "the batch never completed") else {
                Issue.record("the write batch failed")
                return
            }
            scene.expectEverySpanGathered()
            // Pieces it cannot take (an empty one) leave the batch unstarted.
            let withAnEmptyPiece: [WritePiece] = scene.writePieces + [(0, UnsafeRawBufferPointer(start: nil, count: 0))]
            #expect(!scene.device.startWrites(withAnEmptyPiece, fua: false) { _ in })
        }
    }

    @Test func synchronousScatteredReadIsOneBatch() throws {
        try Self.withScene { scene in
            try scene.device.read(scene.readPieces)
            scene.expectEverySpanGathered()
            scene.expectHonestBytes()
        }
    }

    @Test func synchronousScatteredWriteIsOneBatch() throws {
        try Self.withScene { scene in
            try scene.device.write(scene.writePieces)
            scene.expectEverySpanGathered()
            // A piece outside the export is refused before anything is sent.
            let outside: [WritePiece] = [(1 << 20, UnsafeRawBufferPointer(scene.buffers[0]))]
            #expect(throws: BlockDeviceError.outOfRange(offset: 1 << 20, length: 4096, size: 1 << 20)) { try scene.device.write(outside) }
        }
    }

    @Test func synchronousScatteredReadThrowsAFailingPiece() throws {
        let failing = Self.spans[5].offset
        try Self.withScene(failing: [failing]) { scene in
            #expect {
                try scene.device.read(scene.readPieces)
            } throws: { error in
                guard case BlockDeviceError.io(let operation, let code) = error else { return false }
                return code == EIO && operation.contains("NBD_CMD_READ at \(failing)")
            }
            // A piece outside the export is refused before anything is sent.
            let outside: [ReadPiece] = [(1 << 20, scene.buffers[0])]
            #expect(throws: BlockDeviceError.outOfRange(offset: 1 << 20, length: 4096, size: 1 << 20)) { try scene.device.read(outside) }
        }
    }
}
