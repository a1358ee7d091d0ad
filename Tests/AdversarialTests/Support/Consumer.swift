import BlockDevice
import Testing
import Threads

@testable import CryptPool

/// How one read through a crypt volume turned out.
enum ReadOutcome: Equatable {
    /// Exactly what the consumer may see: the data written, or zeroes.
    case correct
    /// An error: acceptable from hostile storage, never wrong data.
    case failed(BlockDeviceError)
    /// Data the consumer never wrote there: the one thing that must not happen.
    case wrong
}

/// Counts of read outcomes.
struct ReadTally: CustomStringConvertible {
    var correct = 0
    var failed = 0
    var wrong = 0
    var total: Int { correct + failed + wrong }

    mutating func add(_ outcome: ReadOutcome) {
        switch outcome {
        case .correct: correct += 1
        case .failed: failed += 1
        case .wrong: wrong += 1
        }
    }

    var description: String { "reads \(correct) correct, \(failed) refused with an error, \(wrong) wrong" }
}

/// The consumer of one crypt volume: writes whole 4 KiB blocks with seeded
/// contents and judges every read against what it wrote.
final class Consumer {
    /// Which reads are acceptable.
    enum Judgement {
        /// The same pool session: the last acknowledged write, exactly.
        case sameSession
        /// After a reopen: the last write a completed flush covered, or any later one.
        case afterReopen
    }

    var volume: Volume
    let blocks: UInt64
    /// Seeds of the acknowledged writes of each block, oldest first.
    private(set) var history: [UInt64: [UInt64]] = [:]
    /// How many of each block's writes the last completed flush covers.
    private var flushedCount: [UInt64: Int] = [:]
    /// Seeds of writes that failed: the block may hold them or not.
    private var uncertain: [UInt64: Set<UInt64>] = [:]
    private(set) var tally = ReadTally()

    init(volume: Volume) {
        self.volume = volume
        blocks = volume.size / UInt64(blockSize)
    }

    /// Writes `seed`'s contents to `block`; a failure leaves the block
    /// holding either version.
    func write(_ block: UInt64, seed: UInt64) throws(BlockDeviceError) {
        do throws(BlockDeviceError) {
            try volume.writeBytes(at: block * UInt64(blockSize), blockContents(seed: seed))
            history[block, default: []].append(seed)
        } catch {
            uncertain[block, default: []].insert(seed)
            throw error
        }
    }

    /// Flushes; on success every acknowledged write so far is durable.
    func flush() throws(BlockDeviceError) {
        try volume.flush()
        for (block, seeds) in history { flushedCount[block] = seeds.count }
    }

    /// The seeds a read of `block` may return.
    func acceptable(_ block: UInt64, _ judgement: Judgement) -> Set<UInt64> {
        let seeds = history[block] ?? []
        var result = uncertain[block] ?? []
        switch judgement {
        case .sameSession:
            result.insert(seeds.last ?? 0)
        case .afterReopen:
            let flushed = flushedCount[block] ?? 0
            if flushed == 0 { result.insert(0) }
            result.formUnion(seeds[max(flushed - 1, 0)...])
        }
        return result
    }

    /// Reads `block` and judges what came back.
    @discardableResult
    func check(_ block: UInt64, _ judgement: Judgement = .sameSession) -> ReadOutcome {
        let outcome: ReadOutcome
        do throws(BlockDeviceError) {
            let bytes = try volume.readBytes(at: block * UInt64(blockSize), count: blockSize)
            outcome = acceptable(block, judgement).contains { blockContents(seed: $0) == bytes } ? .correct : .wrong
        } catch {
            outcome = .failed(error)
        }
        tally.add(outcome)
        return outcome
    }

    /// Reads `blocks` and returns their tally (also added to the total).
    func checkAll(_ blocks: some Sequence<UInt64>, _ judgement: Judgement = .sameSession) -> ReadTally {
        var tally = ReadTally()
        for block in blocks { tally.add(check(block, judgement)) }
        return tally
    }

    /// Every block ever written.
    var writtenBlocks: [UInt64] { history.keys.sorted() }
}

/// One hostile scenario: its expected outcome, what happened, and one
/// line for `scripts/reliability` ("hostile scenario NAME: passed ...").
final class ScenarioRun {
    let name: String
    let expected: String
    private(set) var problems: [String] = []
    private(set) var observations: [String] = []
    var tally = ReadTally()
    private let started = monotonicSeconds()

    init(_ name: String, expected: String) {
        self.name = name
        self.expected = expected
    }

    /// Records a problem (and a test issue) unless `condition` holds.
    func require(_ condition: Bool, _ what: @autoclosure () -> String, sourceLocation: SourceLocation = #_sourceLocation) {
        guard !condition else { return }
        problems.append(what())
        Issue.record(Comment(rawValue: "\(name): \(what())"), sourceLocation: sourceLocation)
    }

    func observe(_ what: String) { observations.append(what) }

    var elapsed: Double { monotonicSeconds() - started }

    func finish() {
        let verdict = problems.isEmpty ? "passed" : "FAILED (\(problems.joined(separator: "; ")))"
        let seconds = (elapsed * 10).rounded() / 10
        print(
            "hostile scenario \(name): \(verdict); expected: \(expected); observed: \(tally)"
                + (observations.isEmpty ? "" : "; " + observations.joined(separator: "; "))
                + "; wrong data returned: \(tally.wrong); \(seconds) s")
    }
}

/// Runs a scenario body, turning a thrown error into a failure, and prints its line.
func scenario(_ name: String, expected: String, _ body: (ScenarioRun) throws -> Void) {
    let run = ScenarioRun(name, expected: expected)
    do {
        try body(run)
    } catch {
        run.require(false, "unexpected error: \(error)")
    }
    run.finish()
}
