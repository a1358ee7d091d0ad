#if canImport(Glibc)
import Glibc
#endif
import BlockDevice
import Foundation
import NBDClient
import NBDServer
import PoolFormat
import Sockets
import TestSupport
import Testing
import Threads

@testable import CryptPool

/// Storage that holds the READs it is asked for, unanswered, until
/// `expected` of them have arrived (or `patience` seconds pass), counting
/// the most it held at once: the runs of a fragmented volume read sent as
/// one batch all arrive while the first waits for its answer; runs read one
/// round trip at a time never overlap. It is an `AsynchronousBlockDevice`,
/// so the server hands it each READ on the connection thread as it decodes
/// it, whatever its worker threads do.
final class GatheringDevice: AsynchronousBlockDevice, ForwardingBlockDevice {
    struct State {
        var expected: Int?
        var generation = 0
        var held: [@Sendable () -> Void] = []
        var released = false
        var most = 0
        var reads = 0
        /// Reads released by the patience running out, not by the batch arriving.
        var gaveUp = 0
    }

    let inner: HostileDevice
    let state = Guarded(State())
    static let patience = 3.0

    init(over inner: HostileDevice) { self.inner = inner }

    /// Starts gathering `expected` reads, forgetting earlier counts; after
    /// `patience` seconds whatever is held is answered anyway.
    func arm(_ expected: Int) {
        let generation = state.update { state -> Int in
            state = State(expected: expected, generation: state.generation + 1)
            return state.generation
        }
        Thread.detachNewThread { [self] in
            let late = state.wait(until: { $0.generation != generation || $0.released }, timeout: Self.patience) { _ in () } == nil
            guard late else { return }
            let jobs = state.update { state -> [@Sendable () -> Void] in
                guard state.generation == generation, !state.released else { return [] }
                state.released = true
                state.gaveUp += state.held.count
                defer { state.held = [] }
                return state.held
            }
            for job in jobs { job() }
        }
    }

    /// Stops gathering; returns what was seen.
    func disarm() -> State {
        state.update { state in
            defer {
                state.expected = nil
                state.generation += 1
            }
            return state
        }
    }

    func startRead(
        at offset: UInt64, into buffer: UnsafeMutableRawBufferPointer, completion: @escaping @Sendable (AsynchronousOutcome) -> Void
    ) -> Bool {
        // SAFETY: the server keeps the buffer until the completion runs.
        nonisolated(unsafe) let buffer = buffer
        let job: @Sendable () -> Void = { [inner] in
            do throws(BlockDeviceError) {
                try inner.read(at: offset, into: buffer)
                completion(.done)
            } catch {
                completion(.failed(error))
            }
        }
        let jobs = state.update { state -> [@Sendable () -> Void] in
            state.reads += 1
            guard let expected = state.expected, !state.released else { return [job] }
            state.held.append(job)
            state.most = max(state.most, state.held.count)
            guard state.held.count >= expected else { return [] }
            state.released = true
            defer { state.held = [] }
            return state.held
        }
        for job in jobs { job() }
        return true
    }

    func startWrite(
        at offset: UInt64, from buffer: UnsafeRawBufferPointer, fua: Bool, completion: @escaping @Sendable (AsynchronousOutcome) -> Void
    ) -> Bool { false }
}

/// The crypt side's storage: the real `RemoteBlockDevice`, counting how
/// the pool calls on it, so a test can tell one batch from one `start` per
/// run (both reach storage pipelined).
final class CountingStorage: AsynchronousBlockDevice, ForwardingBlockDevice {
    struct Calls {
        var startRead = 0
        var startReads = 0
        var startWrite = 0
        var startWrites = 0
        var read = 0
        var readPieces = 0
    }

    let inner: RemoteBlockDevice
    let calls = Guarded(Calls())

    init(_ remote: RemoteBlockDevice) { inner = remote }

    func reset() { calls.update { $0 = Calls() } }

    func startRead(
        at offset: UInt64, into buffer: UnsafeMutableRawBufferPointer, completion: @escaping @Sendable (AsynchronousOutcome) -> Void
    ) -> Bool {
        calls.update { $0.startRead += 1 }
        return inner.startRead(at: offset, into: buffer, completion: completion)
    }
    func startWrite(
        at offset: UInt64, from buffer: UnsafeRawBufferPointer, fua: Bool, completion: @escaping @Sendable (AsynchronousOutcome) -> Void
    ) -> Bool {
        calls.update { $0.startWrite += 1 }
        return inner.startWrite(at: offset, from: buffer, fua: fua, completion: completion)
    }
    func startReads(_ pieces: [ReadPiece], completion: @escaping @Sendable (AsynchronousOutcome) -> Void) -> Bool {
        calls.update { $0.startReads += 1 }
        return inner.startReads(pieces, completion: completion)
    }
    func startWrites(_ pieces: [WritePiece], fua: Bool, completion: @escaping @Sendable (AsynchronousOutcome) -> Void) -> Bool {
        calls.update { $0.startWrites += 1 }
        return inner.startWrites(pieces, fua: fua, completion: completion)
    }
    func read(_ pieces: [ReadPiece]) throws(BlockDeviceError) {
        calls.update { $0.readPieces += 1 }
        try inner.read(pieces)
    }
    func read(at offset: UInt64, into buffer: UnsafeMutableRawBufferPointer) throws(BlockDeviceError) {
        calls.update { $0.read += 1 }
        try inner.read(at: offset, into: buffer)
    }
}

/// A pool over a `GatheringDevice` served by the real `NBDServer` through a real
/// `RemoteBlockDevice`, with volume "vm" fragmented: 32 blocks written in
/// one request, then every other block overwritten alone, and flushed.
/// The overwrites land beside their neighbours, so the blocks lie
/// permuted in one neighbourhood; `padded`, each overwrite is followed by
/// a write of another volume that takes the blocks after it, so they lie
/// further apart than one request passes over (`LocatedRead.spanGap`).
final class FragmentedPool {
    static let blocks: UInt64 = 32
    let directory: TemporaryDirectory
    let device: GatheringDevice
    let server: NBDServer
    let remote: RemoteBlockDevice
    let storage: CountingStorage
    let anchorDirectory: TemporaryDirectory
    let pool: Pool
    let volume: Volume
    /// What the volume's first `blocks` blocks hold.
    private(set) var expected: [UInt8]

    init(padded: Bool = true) throws {
        directory = try TemporaryDirectory("frag")
        device = GatheringDevice(over: HostileDevice(over: try MemoryBlockDevice(size: 16 << 20)))
        server = try NBDServer(
            exports: [NBDExport(name: "pool", device: device)], defaultExport: "pool",
            configuration: NBDServerConfiguration(handshakeTimeout: 5, replyTimeout: 5, shutdownTimeout: 3),
            logger: quietLogger("fragmented-storage"))
        let address = SocketAddress.unix(path: directory.file("storage.sock"))
        server.start([try Listener(binding: address)])
        remote = try RemoteBlockDevice(
            connectingTo: address, export: "pool",
            options: RemoteBlockDevice.Options(
                connection: NBDConnection.Options(handshakeTimeout: 2, requestTimeout: 10, logger: quietLogger("crypt-client")),
                retryWindow: 2, initialBackoff: 0.01, maxBackoff: 0.2))
        storage = CountingStorage(remote)
        anchorDirectory = try TemporaryDirectory("anchor")
        pool = try Pool.format(
            storage: storage, passphrase: testPassphrase, cost: testCost, anchor: try FileTrustAnchor(directory: anchorDirectory.path)
        ).pool
        try pool.createVolume(name: "vm", size: 1 << 20)
        try pool.createVolume(name: "pad", size: 1 << 20)
        volume = try pool.volume(named: "vm")
        let pad = try pool.volume(named: "pad")
        let padding = [UInt8](repeating: 0x5A, count: Int(LocatedRead.spanGap + 1) * 4096)

        var generator = SeededGenerator(seed: 42)
        expected = (0..<(Int(Self.blocks) * 4096)).map { _ in UInt8.random(in: 0...255, using: &generator) }
        try expected.withUnsafeBytes { try volume.write(at: 0, from: $0, fua: false) }
        for block in stride(from: 0, to: Int(Self.blocks), by: 2) {
            let fresh = (0..<4096).map { _ in UInt8.random(in: 0...255, using: &generator) }
            try fresh.withUnsafeBytes { try volume.write(at: UInt64(block) * 4096, from: $0, fua: false) }
            expected.replaceSubrange((block * 4096)..<((block + 1) * 4096), with: fresh)
            if padded { try padding.withUnsafeBytes { try pad.write(at: UInt64(block / 2 * padding.count), from: $0, fua: false) } }
        }
        try volume.flush()
        storage.reset()
    }

    /// Where storage holds the volume's first `blocks` blocks, and the
    /// requests that read them.
    func located() throws -> LocatedRead {
        let scratch = UnsafeMutableRawBufferPointer.allocate(byteCount: Int(Self.blocks) * 4096, alignment: 64)
        defer { scratch.deallocate() }
        return try #require(try volume.locate(0..<Self.blocks, in: scratch, cachedOnly: true))
    }

    /// Reads the blocks through the volume's fast path; nil if it refused.
    func startRead() -> (AsynchronousPathOutcome?, [UInt8]) {
        let result = Guarded<(calls: Int, outcome: AsynchronousPathOutcome?)>((0, nil))
        var bytes = [UInt8](repeating: 0xEE, count: Int(Self.blocks) * 4096)
        let started = bytes.withUnsafeMutableBytes { buffer in
            volume.startRead(at: 0, into: buffer) { outcome in
                result.update { $0 = ($0.calls + 1, AsynchronousPathOutcome(outcome)) }
            }
        }
        guard started else { return (nil, bytes) }
        let final = result.wait(until: { $0.calls > 0 }, timeout: 20) { $0 }
        #expect(final?.calls == 1)
        return (final?.outcome, bytes)
    }

    func read() throws(BlockDeviceError) -> [UInt8] {
        var bytes = [UInt8](repeating: 0xEE, count: Int(Self.blocks) * 4096)
        var failure: BlockDeviceError?
        bytes.withUnsafeMutableBytes { buffer in
            do throws(BlockDeviceError) { try volume.read(at: 0, into: buffer) } catch { failure = error }
        }
        if let failure { throw failure }
        return bytes
    }

    /// The blocks where `bytes` differs from `expected` (compared here: a
    /// failed `#expect` on 128 KiB arrays would compute a diff for ages).
    func wrongBlocks(_ bytes: [UInt8]) -> [Int] {
        (0..<Int(Self.blocks)).filter { block in
            bytes.count != expected.count || bytes[(block * 4096)..<((block + 1) * 4096)] != expected[(block * 4096)..<((block + 1) * 4096)]
        }
    }

    deinit {
        try? pool.close()
        remote.close()
        server.shutdown()
    }
}

enum AsynchronousPathOutcome: Equatable {
    case done
    case failed(BlockDeviceError)
    case redo

    init(_ outcome: AsynchronousOutcome) {
        switch outcome {
        case .done: self = .done
        case .failed(let error): self = .failed(error)
        case .redoSynchronously: self = .redo
        }
    }
}

/// A read of a fragmented volume costs one storage batch, on the fast path
/// and the synchronous one: one call on the storage device, and every
/// run's READ reaches storage before the first is answered.
@Suite("Fragmented volume reads", .serialized)
struct FragmentedReadTests {
    /// A fragmented pool, and the number of runs its blocks lie in, which
    /// its storage is armed to gather.
    static func armedPool(sourceLocation: SourceLocation = #_sourceLocation) throws -> (rig: FragmentedPool, runs: Int) {
        let rig = try FragmentedPool()
        let runs = try rig.located().requests.count
        #expect(runs >= Int(FragmentedPool.blocks) / 2, "the volume is not fragmented: \(runs) runs", sourceLocation: sourceLocation)
        rig.device.arm(runs)
        return (rig, runs)
    }

    /// Expects storage to have seen the `runs` run reads all at once.
    static func expectOneBatch(_ seen: GatheringDevice.State, runs: Int, sourceLocation: SourceLocation = #_sourceLocation) {
        #expect(seen.reads == runs, sourceLocation: sourceLocation)
        #expect(seen.most == runs, "at most \(seen.most) of \(runs) run reads reached storage together", sourceLocation: sourceLocation)
        #expect(seen.gaveUp == 0, sourceLocation: sourceLocation)
    }

    @Test func theFastPathSendsEveryRunInOneBatch() throws {
        let (rig, runs) = try Self.armedPool()
        let (outcome, bytes) = rig.startRead()
        let seen = rig.device.disarm()
        let calls = rig.storage.calls.withLock { $0 }
        #expect(calls.startReads == 1 && calls.startRead == 0, "\(calls)")
        #expect(outcome == .done)
        #expect(rig.wrongBlocks(bytes) == [])
        Self.expectOneBatch(seen, runs: runs)
    }

    @Test func theSynchronousPathSendsEveryRunInOneBatch() throws {
        let (rig, runs) = try Self.armedPool()
        let bytes = try rig.read()
        let seen = rig.device.disarm()
        let calls = rig.storage.calls.withLock { $0 }
        #expect(calls.readPieces == 1 && calls.read == 0, "\(calls)")
        #expect(rig.wrongBlocks(bytes) == [])
        Self.expectOneBatch(seen, runs: runs)
    }

    /// Overwrites beside their neighbours leave the blocks permuted in one
    /// neighbourhood: one staged request reads them all, on the fast path
    /// and the synchronous one, and every block comes back as written.
    @Test func aPermutedNeighbourhoodIsReadWithOneRequest() throws {
        let rig = try FragmentedPool(padded: false)
        #expect(try rig.located().requests.count == 1)
        let (outcome, bytes) = rig.startRead()
        #expect(outcome == .done)
        #expect(rig.wrongBlocks(bytes) == [])
        #expect(rig.wrongBlocks(try rig.read()) == [])
        let calls = rig.storage.calls.withLock { $0 }
        #expect(calls.startReads == 1 && calls.read == 1 && calls.startRead == 0 && calls.readPieces == 0, "\(calls)")
    }

    /// One run failing fails the whole request: the fast path hands it to
    /// the synchronous path (which reads again and succeeds, the failure
    /// having been a one-off), and the synchronous path reports it.
    @Test func aRunFailingMidBatchIsNotReportedDone() throws {
        let rig = try FragmentedPool()
        let located = try rig.located()
        let middle = located.requests[located.requests.count / 2].offset / 4096
        rig.device.inner.failNext(.read, blocks: middle..<(middle + 1))
        let (outcome, bytes) = rig.startRead()
        #expect(outcome == .redo)
        #expect(rig.device.inner.counters.faults == 1)
        // What the NBD server then does: the synchronous read, which succeeds.
        #expect(rig.wrongBlocks(try rig.read()) == [])
        _ = bytes

        rig.device.inner.failNext(.read, blocks: middle..<(middle + 1))
        #expect {
            _ = try rig.read()
        } throws: { error in
            guard case BlockDeviceError.io(_, let code) = error else { return false }
            return code == EIO
        }
        #expect(rig.wrongBlocks(try rig.read()) == [])
    }
}
