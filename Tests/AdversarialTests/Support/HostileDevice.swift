#if canImport(Glibc)
import Glibc
#endif
import BlockDevice
import TestSupport
import Threads

/// What the hostile storage domain does to the requests it serves.
enum Misbehaviour: Sendable, Equatable, CustomStringConvertible {
    /// Serves every request faithfully.
    case honest
    /// Flips one bit inside the first 128 bytes (authenticated in every
    /// pool structure) of each 4 KiB block a read returns, with this probability.
    case flipBits(probability: Double)
    /// A read of block b returns block b ^ 1 instead (a misdirected read).
    case serveNeighbour
    /// A read of a block in `blocks` returns what it held before its latest
    /// write (zeroes if it was written once): a replay of an older version.
    case servePreviousVersion(of: Range<UInt64>)
    /// Writes are acknowledged and thrown away.
    case dropWrites
    /// Writes go to a volatile cache that reads see; FLUSH is acknowledged
    /// without writing the cache back. `loseVolatileState()` is the power cut.
    case volatileCache
    /// Writes go to a cache; each FLUSH writes back a random subset of it in
    /// random order and keeps the rest for later (or never).
    case reorderAcrossFlush
    /// An honest volatile write cache: FLUSH writes it all back; a crash
    /// (`loseVolatileState()`) loses what was not flushed yet.
    case writeBackCache
    /// Each request fails with EIO with this probability (1: every request).
    case failRequests(probability: Double)
    /// Reads never complete until `releaseStalls()`.
    case stallReads
    /// FLUSH never completes until `releaseStalls()`.
    case stallFlushes

    var description: String {
        switch self {
        case .honest: "honest"
        case .flipBits(let probability): "flip bits (p=\(probability))"
        case .serveNeighbour: "serve the neighbouring block"
        case .servePreviousVersion(let blocks): "serve the previous version of blocks \(blocks)"
        case .dropWrites: "drop writes"
        case .volatileCache: "acknowledge FLUSH without persisting"
        case .reorderAcrossFlush: "reorder writes across FLUSH"
        case .writeBackCache: "an honest write-back cache"
        case .failRequests(let probability): "EIO (p=\(probability))"
        case .stallReads: "stall reads forever"
        case .stallFlushes: "stall FLUSH forever"
        }
    }
}

/// A request kind, for one-shot faults.
enum RequestKind: Sendable, Equatable {
    case read, write, flush
}

/// A block device that misbehaves on purpose, for serving through the real
/// `NBDServer` as a hostile storage domain. It wraps an honest memory
/// device and remembers enough (the previous version of every block it saw
/// written, snapshots, a write cache) to replay, roll back or lose writes.
final class HostileDevice: BlockDevice {
    struct Counters: Sendable {
        var requests = 0
        var reads = 0
        var writes = 0
        var flushes = 0
        /// Faults actually injected: bits flipped, blocks misdirected or
        /// replayed, writes dropped or held back, errors returned, stalls.
        var faults = 0
        var stalled = 0
    }

    private struct State {
        var misbehaviour: Misbehaviour = .honest
        var random: SeededGenerator
        var counters = Counters()
        /// Content of each 4 KiB block before its latest write.
        var previous: [UInt64: [UInt8]] = [:]
        /// Writes not yet on the backing device, oldest first.
        var cache: [(offset: UInt64, bytes: [UInt8])] = []
        var stallsReleased = false
        /// One-shot failures: the next request of the kind touching the blocks fails with EIO.
        var oneShots: [(kind: RequestKind, blocks: Range<UInt64>)] = []
    }

    let backing: MemoryBlockDevice
    private let state: Guarded<State>
    static let unit = UInt64(blockSize)

    init(over backing: MemoryBlockDevice, seed: UInt64 = 1) {
        self.backing = backing
        state = Guarded(State(random: SeededGenerator(seed: seed)))
    }

    var size: UInt64 { backing.size }
    var isReadOnly: Bool { false }
    var capabilities: BlockDeviceCapabilities { backing.capabilities }
    var minimumBlockSize: UInt32 { 1 }

    // MARK: Test control

    var misbehaviour: Misbehaviour {
        get { state.withLock { $0.misbehaviour } }
        set { state.update { $0.misbehaviour = newValue } }
    }

    var counters: Counters { state.withLock { $0.counters } }

    func resetCounters() { state.update { $0.counters = Counters() } }

    /// Fails the next request of `kind` that touches `blocks` (any, for a
    /// flush), once, with EIO, whatever the misbehaviour.
    func failNext(_ kind: RequestKind, blocks: Range<UInt64> = 0..<UInt64.max) {
        state.update { $0.oneShots.append((kind, blocks)) }
    }

    /// Lets every stalled request go on, and stops stalling.
    func releaseStalls() {
        state.update { state in
            state.stallsReleased = true
            if state.misbehaviour == .stallReads || state.misbehaviour == .stallFlushes { state.misbehaviour = .honest }
        }
    }

    /// A copy of the whole device as the backing store holds it.
    func snapshot() -> [UInt8] { state.withLock { _ in backing.snapshot() } }

    /// Puts the whole device back to `image`, forgetting any cache.
    func rollBack(to image: [UInt8]) throws {
        try state.withLock { state in
            state.cache = []
            try backing.writeBytes(at: 0, image)
        }
    }

    /// The power cut: cached writes are lost.
    func loseVolatileState() { state.update { $0.cache = [] } }

    /// Writes back the cache in order (an honest flush).
    func writeBackCache() throws {
        try state.withLock { state in
            for entry in state.cache { try store(entry.offset, entry.bytes, &state) }
            state.cache = []
        }
    }

    var cachedWrites: Int { state.withLock { $0.cache.count } }

    // MARK: BlockDevice

    func read(at offset: UInt64, into buffer: UnsafeMutableRawBufferPointer) throws(BlockDeviceError) {
        try checkRange(offset, UInt64(buffer.count))
        let mode = try begin(.read, offset, UInt64(buffer.count)) { $0.reads += 1 }
        if mode == .stallReads { stall() }
        try state.withLock { (state) throws(BlockDeviceError) in
            try backing.read(at: offset, into: buffer)
            for entry in state.cache { overlay(entry, onto: buffer, at: offset) }
            switch state.misbehaviour {
            case .flipBits(let probability):
                forEachBlock(offset, buffer.count) { block, range in
                    guard Double.random(in: 0..<1, using: &state.random) < probability else { return }
                    let span = min(range.count, 128)
                    let byte = range.lowerBound + Int.random(in: 0..<span, using: &state.random)
                    buffer[byte] ^= 1 << UInt8.random(in: 0..<8, using: &state.random)
                    state.counters.faults += 1
                }
            case .serveNeighbour:
                var failure: BlockDeviceError?
                forEachBlock(offset, buffer.count) { block, range in
                    var other = block ^ 1
                    if (other + 1) * Self.unit > size { other = block - 1 }
                    let start = other * Self.unit + (UInt64(range.lowerBound) + offset) % Self.unit
                    do throws(BlockDeviceError) {
                        try backing.read(at: start, into: UnsafeMutableRawBufferPointer(rebasing: buffer[range]))
                        state.counters.faults += 1
                    } catch { failure = error }
                }
                if let failure { throw failure }
            case .servePreviousVersion(let blocks):
                forEachBlock(offset, buffer.count) { block, range in
                    guard blocks.contains(block), let old = state.previous[block] else { return }
                    let skip = Int((UInt64(range.lowerBound) + offset) % Self.unit)
                    old.withUnsafeBytes { source in
                        UnsafeMutableRawBufferPointer(rebasing: buffer[range])
                            .copyMemory(from: UnsafeRawBufferPointer(rebasing: source[skip..<(skip + range.count)]))
                    }
                    state.counters.faults += 1
                }
            default:
                break
            }
        }
    }

    func write(at offset: UInt64, from buffer: UnsafeRawBufferPointer, fua: Bool) throws(BlockDeviceError) {
        try checkRange(offset, UInt64(buffer.count))
        _ = try begin(.write, offset, UInt64(buffer.count)) { $0.writes += 1 }
        try state.withLock { (state) throws(BlockDeviceError) in
            switch state.misbehaviour {
            case .dropWrites:
                state.counters.faults += 1
            case .volatileCache, .reorderAcrossFlush, .writeBackCache:
                state.cache.append((offset, Array(buffer)))
            default:
                try store(offset, Array(buffer), &state)
            }
        }
    }

    func flush() throws(BlockDeviceError) {
        let mode = try begin(.flush, 0, 0) { $0.flushes += 1 }
        if mode == .stallFlushes { stall() }
        try state.withLock { (state) throws(BlockDeviceError) in
            if state.misbehaviour == .writeBackCache {
                for entry in state.cache { try store(entry.offset, entry.bytes, &state) }
                state.cache = []
            }
            guard state.misbehaviour == .reorderAcrossFlush, !state.cache.isEmpty else { return }
            // Write back a random subset, in random order; keep the rest.
            var chosen: [Int] = []
            var kept: [(offset: UInt64, bytes: [UInt8])] = []
            for index in state.cache.indices {
                if Bool.random(using: &state.random) { chosen.append(index) } else { kept.append(state.cache[index]) }
            }
            chosen.shuffle(using: &state.random)
            for index in chosen { try store(state.cache[index].offset, state.cache[index].bytes, &state) }
            state.cache = kept
        }
    }

    func trim(at offset: UInt64, length: UInt64, fua: Bool) throws(BlockDeviceError) {
        try writeZeroes(at: offset, length: length, flags: [])
    }

    func writeZeroes(at offset: UInt64, length: UInt64, flags: ZeroFlags) throws(BlockDeviceError) {
        try checkRange(offset, length)
        guard length <= 64 << 20 else { throw .notSupported("hostile device zeroes at most 64 MiB at once") }
        try writeBytes(at: offset, [UInt8](repeating: 0, count: Int(length)))
    }

    // MARK: Internals

    /// Counts the request; fails it if the scenario says so. Returns the
    /// misbehaviour in force.
    private func begin(
        _ kind: RequestKind, _ offset: UInt64, _ length: UInt64, _ count: (inout Counters) -> Void
    ) throws(BlockDeviceError) -> Misbehaviour {
        try state.withLock { (state) throws(BlockDeviceError) -> Misbehaviour in
            state.counters.requests += 1
            count(&state.counters)
            let touched = (offset / Self.unit)..<((offset + max(length, 1) + Self.unit - 1) / Self.unit)
            if let shot = state.oneShots.firstIndex(where: { $0.kind == kind && (kind == .flush || $0.blocks.overlaps(touched)) }) {
                state.oneShots.remove(at: shot)
                state.counters.faults += 1
                throw .io(operation: "hostile storage: injected one-shot \(kind) failure", errno: EIO)
            }
            if case .failRequests(let probability) = state.misbehaviour, Double.random(in: 0..<1, using: &state.random) < probability {
                state.counters.faults += 1
                throw .io(operation: "hostile storage: injected failure", errno: EIO)
            }
            return state.misbehaviour
        }
    }

    /// Blocks until the test releases stalls: the request never completes
    /// as far as the client can tell.
    private func stall() {
        state.update { state in
            state.counters.stalled += 1
            state.counters.faults += 1
        }
        _ = state.wait(until: { $0.stallsReleased }) { _ in () }
    }

    /// Writes to the backing device, remembering what each block held.
    private func store(_ offset: UInt64, _ bytes: [UInt8], _ state: inout State) throws(BlockDeviceError) {
        guard !bytes.isEmpty else { return }
        let first = offset / Self.unit
        let last = (offset + UInt64(bytes.count) - 1) / Self.unit
        for block in first...last {
            state.previous[block] = try backing.readBytes(at: block * Self.unit, count: Int(Self.unit))
        }
        try backing.writeBytes(at: offset, bytes)
    }

    private func overlay(_ entry: (offset: UInt64, bytes: [UInt8]), onto buffer: UnsafeMutableRawBufferPointer, at offset: UInt64) {
        let start = max(entry.offset, offset)
        let end = min(entry.offset + UInt64(entry.bytes.count), offset + UInt64(buffer.count))
        guard start < end else { return }
        entry.bytes.withUnsafeBytes { source in
            let from = Int(start - entry.offset)
            let to = Int(start - offset)
            UnsafeMutableRawBufferPointer(rebasing: buffer[to..<(to + Int(end - start))])
                .copyMemory(from: UnsafeRawBufferPointer(rebasing: source[from..<(from + Int(end - start))]))
        }
    }

    /// Calls `body` with each 4 KiB block a byte range touches and the part
    /// of the buffer that lies in it.
    private func forEachBlock(_ offset: UInt64, _ count: Int, _ body: (UInt64, Range<Int>) -> Void) {
        var position = 0
        while position < count {
            let absolute = offset + UInt64(position)
            let block = absolute / Self.unit
            let inBlock = Int(min(Self.unit - absolute % Self.unit, UInt64(count - position)))
            body(block, position..<(position + inBlock))
            position += inBlock
        }
    }
}
