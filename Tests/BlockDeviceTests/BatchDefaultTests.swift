import BlockDevice
import Synchronization
import TestSupport
import Testing

/// A memory device whose `startRead`/`startWrite` accept only the first
/// `accepting` requests and hold their completions until `finishHeld()`,
/// to exercise the batch forms' default implementations.
final class HoldingDevice: AsynchronousBlockDevice, ForwardingBlockDevice {
    let inner: MemoryBlockDevice
    private let accepting: Int
    private let held = Mutex<(started: Int, completions: [@Sendable () -> Void])>((0, []))

    init(size: UInt64, accepting: Int = .max) throws {
        inner = try MemoryBlockDevice(size: size)
        self.accepting = accepting
    }

    var started: Int { held.withLock { $0.started } }

    private func hold(_ body: @escaping @Sendable () -> Void) -> Bool {
        held.withLock { held in
            guard held.started < accepting else { return false }
            held.started += 1
            held.completions.append(body)
            return true
        }
    }

    func startRead(
        at offset: UInt64, into buffer: UnsafeMutableRawBufferPointer, completion: @escaping @Sendable (AsynchronousOutcome) -> Void
    ) -> Bool {
        // SAFETY: the test keeps the buffer alive until `finishHeld()`.
        nonisolated(unsafe) let buffer = buffer
        return hold { [inner] in
            do throws(BlockDeviceError) {
                try inner.read(at: offset, into: buffer)
                completion(.done)
            } catch {
                completion(.failed(error))
            }
        }
    }

    func startWrite(
        at offset: UInt64, from buffer: UnsafeRawBufferPointer, fua: Bool, completion: @escaping @Sendable (AsynchronousOutcome) -> Void
    ) -> Bool {
        // SAFETY: the test keeps the buffer alive until `finishHeld()`.
        nonisolated(unsafe) let buffer = buffer
        return hold { [inner] in
            do throws(BlockDeviceError) {
                try inner.write(at: offset, from: buffer, fua: fua)
                completion(.done)
            } catch {
                completion(.failed(error))
            }
        }
    }

    /// Completes every held request, in the order they started.
    func finishHeld() {
        for completion in held.withLock({ held in defer { held.completions = [] }; return held.completions }) { completion() }
    }
}

/// Outcomes a completion was called with.
final class Outcomes: Sendable {
    private let calls = Mutex<[String]>([])
    var completion: @Sendable (AsynchronousOutcome) -> Void {
        { [self] outcome in
            let name =
                switch outcome {
                case .done: "done"
                case .failed: "failed"
                case .redoSynchronously: "redo"
                }
            calls.withLock { $0.append(name) }
        }
    }
    var value: [String] { calls.withLock { $0 } }
}

/// The batch forms of `AsynchronousBlockDevice` as every device gets them:
/// the single form piece by piece, with one merged completion.
@Suite("AsynchronousBlockDevice batch defaults")
struct BatchDefaultTests {
    static let offsets: [UInt64] = [8192, 0, 20480, 12288]

    @Test func piecesCompleteOnceWhenTheLastDoes() throws {
        let device = try HoldingDevice(size: 65536)
        let data = pattern(4 * 4096)
        try device.write(data, at: 0)
        try device.write(data, at: 16384)
        let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: 4 * 4096, alignment: 16)
        defer { buffer.deallocate() }
        buffer.initializeMemory(as: UInt8.self, repeating: 0xEE)
        let pieces: [ReadPiece] = Self.offsets.enumerated().map { index, offset in
            (offset, UnsafeMutableRawBufferPointer(rebasing: buffer[(index * 4096)..<((index + 1) * 4096)]))
        }
        let outcomes = Outcomes()
        #expect(device.startReads(pieces, completion: outcomes.completion))
        #expect(device.started == 4)
        #expect(outcomes.value.isEmpty)
        device.finishHeld()
        #expect(outcomes.value == ["done"])
        let all = try device.read(at: 0, count: 32768)
        for (index, offset) in Self.offsets.enumerated() {
            #expect(Array(buffer[(index * 4096)..<((index + 1) * 4096)]) == Array(all[Int(offset)..<(Int(offset) + 4096)]))
        }
        // The synchronous form reads every piece too.
        buffer.initializeMemory(as: UInt8.self, repeating: 0xEE)
        try device.read(pieces)
        #expect(Array(buffer[0..<4096]) == Array(all[8192..<12288]))
    }

    @Test func aPieceThatWillNotStartEndsTheBatchAsRedoAfterTheStartedOnes() throws {
        let device = try HoldingDevice(size: 65536, accepting: 2)
        let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: 4 * 4096, alignment: 16)
        defer { buffer.deallocate() }
        let pieces: [WritePiece] = Self.offsets.enumerated().map { index, offset in
            (offset, UnsafeRawBufferPointer(rebasing: buffer[(index * 4096)..<((index + 1) * 4096)]))
        }
        let outcomes = Outcomes()
        #expect(device.startWrites(pieces, fua: false, completion: outcomes.completion))
        // Not before the two started writes have completed.
        #expect(outcomes.value.isEmpty)
        device.finishHeld()
        #expect(outcomes.value == ["redo"])
    }

    @Test func aBatchWhoseFirstPieceWillNotStartIsRefused() throws {
        let device = try HoldingDevice(size: 65536, accepting: 0)
        let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: 4096, alignment: 16)
        defer { buffer.deallocate() }
        let outcomes = Outcomes()
        let pieces: [ReadPiece] = [(0, buffer), (8192, buffer)]
        #expect(!device.startReads(pieces, completion: outcomes.completion))
        device.finishHeld()
        #expect(outcomes.value.isEmpty)
        // An empty batch is done at once.
        #expect(device.startReads([], completion: outcomes.completion))
        #expect(outcomes.value == ["done"])
    }

    @Test func aFailedPieceFailsTheBatch() throws {
        let device = try MemoryBlockDevice(size: 16384)
        let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: 4096, alignment: 16)
        defer { buffer.deallocate() }
        let outcomes = Outcomes()
        // Inline: done on the spot; the piece past the end fails.
        let pieces: [ReadPiece] = [(0, buffer), (16384, buffer), (4096, buffer)]
        #expect(device.startReads(pieces, completion: outcomes.completion))
        #expect(outcomes.value == ["failed"])
        #expect(throws: BlockDeviceError.outOfRange(offset: 16384, length: 4096, size: 16384)) {
            try device.read(pieces)
        }
    }
}
