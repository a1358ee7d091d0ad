import Foundation
import TestScratch
import TestSupport

/// A consumer's write-and-flush workload on one volume, one qemu-io process
/// per step: `write; flush; write; flush; …; write` with fresh patterns at
/// random 4 KiB-aligned places, some of the writes being NBD_CMD_WRITE_ZEROES
/// (`write -z`) or NBD_CMD_TRIM (`discard`, which cryptd reads back as
/// zeroes on whole blocks). It keeps a `BlockModel` of what was written
/// and what each completed flush covers, and checks the volume against it.
final class PatternWorkload {
    let chain: Chain
    let volume: String
    let seed: UInt64
    private(set) var model: BlockModel
    private var generator: SeededGenerator
    private var nextPattern: UInt8 = 1
    private var steps = 0
    /// Seconds each fully successful step took, to report latency.
    private(set) var stepSeconds: [Double] = []
    /// Steps whose qemu-io output did not fit their commands (a harness
    /// problem: the model then assumed the least).
    private(set) var unreadableSteps: [String] = []
    /// Largest write, in blocks.
    let maxBlocks = 64

    init(chain: Chain, volume: String, seed: UInt64 = freshSeed()) throws {
        guard let spec = chain.volumes.first(where: { $0.name == volume }) else { throw ChainError.setup("no volume \(volume)") }
        self.chain = chain
        self.volume = volume
        self.seed = seed
        model = BlockModel(blocks: spec.size / BlockModel.blockSize)
        generator = SeededGenerator(seed: seed)
    }

    /// One command of a step.
    enum Action {
        case write(blocks: Range<Int>, pattern: UInt8)
        case zero(blocks: Range<Int>)
        case trim(blocks: Range<Int>)
        case flush

        var command: String {
            switch self {
            case .write(let blocks, let pattern): "write -P 0x\(String(pattern, radix: 16)) \(Self.span(blocks))"
            case .zero(let blocks): "write -z \(Self.span(blocks))"
            case .trim(let blocks): "discard \(Self.span(blocks))"
            case .flush: "flush"
            }
        }

        /// What the blocks hold once the action has happened.
        var effect: (blocks: Range<Int>, pattern: UInt8)? {
            switch self {
            case .write(let blocks, let pattern): (blocks, pattern)
            case .zero(let blocks), .trim(let blocks): (blocks, 0)
            case .flush: nil
            }
        }

        private static func span(_ blocks: Range<Int>) -> String {
            "\(blocks.lowerBound * BlockModel.blockSize) \(blocks.count * BlockModel.blockSize)"
        }
    }

    /// A running step: its process and its commands.
    struct Step {
        let process: ChildProcess
        let actions: [Action]
    }

    /// Starts a step of `writes` writes with a flush between each two.
    func launch(writes: Int = 2) throws -> Step {
        var actions: [Action] = []
        for index in 0..<writes {
            if index > 0 { actions.append(.flush) }
            let count = Int.random(in: 1...maxBlocks, using: &generator)
            let first = Int.random(in: 0...(model.blockCount - count), using: &generator)
            let blocks = first..<(first + count)
            switch Int.random(in: 0..<10, using: &generator) {
            case 0: actions.append(.zero(blocks: blocks))
            case 1: actions.append(.trim(blocks: blocks))
            default:
                actions.append(.write(blocks: blocks, pattern: nextPattern))
                nextPattern = nextPattern == 255 ? 1 : nextPattern + 1
            }
        }
        steps += 1
        let process = try launchQemuIO(chain.uri(volume), actions.map(\.command), logPath: chain.scratch.file("step-\(volume)-\(steps).log"))
        return Step(process: process, actions: actions)
    }

    /// What a step did: which commands succeeded, and whether qemu-io's
    /// own flush when it closed the volume did.
    struct Outcome: Equatable {
        var commands: [Bool]
        var flushedOnClose: Bool
    }

    /// Which commands of a step succeeded, from qemu-io's output: it runs
    /// every command even after one fails, prints "wrote …" or
    /// "write failed: …" for each write (zeroing included), "discard …" or
    /// "discard failed: …" for each discard, and nothing for a flush,
    /// whether it succeeds or fails. So a flush counts as done only when the
    /// trace (`QemuIOTrace`) shows a successful reply to a flush request
    /// between the report of the command before it and the report of the
    /// command after it (or, for qemu-io's flush on closing, after the last
    /// report). Nil when the output does not fit the commands.
    static func outcome(of actions: [Action], in output: String) -> Outcome? {
        var result: [Bool] = []
        // Since the last report: whether a flush request got a successful reply.
        var flushed = false
        var awaitedFlush: String?
        func settleFlushes() {
            while result.count < actions.count, case .flush = actions[result.count] { result.append(flushed) }
            flushed = false
        }
        for line in output.split(separator: "\n") {
            if let event = QemuIOTrace.parse(line) {
                switch event {
                case .request(let type, let handle):
                    awaitedFlush = type == "flush" ? handle : nil
                case .reply(let handle, let succeeded):
                    if handle == awaitedFlush, succeeded { flushed = true }
                    awaitedFlush = nil
                }
                continue
            }
            guard line.hasPrefix("wrote ") || line.hasPrefix("discard ") || line.contains(" failed: ") else { continue }
            settleFlushes()
            guard result.count < actions.count else { return nil }
            let (done, failed) = if case .trim = actions[result.count] { ("discard ", "discard failed: ") } else { ("wrote ", "write failed: ") }
            if line.hasPrefix(failed) {
                result.append(false)
            } else if line.hasPrefix(done) {
                result.append(true)
            } else {
                return nil
            }
        }
        let flushedOnClose = flushed
        settleFlushes()
        return result.count == actions.count ? Outcome(commands: result, flushedOnClose: flushedOnClose) : nil
    }

    /// Tells `model` what a step did, in order: an acknowledged write is
    /// acknowledged, a completed flush covers every write before it, a
    /// failed write may or may not have happened. Without outcomes, every
    /// write counts as maybe-happened and no flush as done.
    static func record(_ actions: [Action], _ outcome: Outcome?, into model: inout BlockModel) {
        for (index, action) in actions.enumerated() {
            let done = outcome?.commands[index] ?? false
            if let (blocks, pattern) = action.effect {
                model.attempt(blocks, pattern)
                if done { model.acknowledge(blocks, pattern) }
            } else if done {
                model.flushed()
            }
        }
        if outcome?.flushedOnClose == true { model.flushed() }
    }

    /// Waits (bounded) for a step and tells the model what happened
    /// (`record`). If qemu-io could not open the volume, or its output does
    /// not fit, every write counts as maybe-happened and no flush as done.
    /// Returns whether every command succeeded, and the output.
    @discardableResult
    func finish(_ step: Step, timeout: Double = 60) throws -> (succeeded: Bool, output: String) {
        guard let status = step.process.waitForExit(seconds: timeout) else {
            step.process.kill9()
            throw ChainError.timedOut(command: step.process.commandLine, seconds: timeout, output: lastPart(step.process.log))
        }
        let output = step.process.log
        unlink(step.process.outputPath)
        let messages = QemuIOTrace.withoutTrace(output)
        let opened = !messages.contains("can't open")
        let outcome = opened ? Self.outcome(of: step.actions, in: output) : nil
        if opened, outcome == nil { unreadableSteps.append("`\(step.process.commandLine)`: \(output)") }
        if status == 0, let outcome, outcome.commands.contains(false) {
            unreadableSteps.append("`\(step.process.commandLine)` exited 0, but its trace lacks a reply to a flush: \(output)")
        }
        Self.record(step.actions, outcome, into: &model)
        let succeeded = status == 0 && outcome?.commands.allSatisfy { $0 } == true && qemuIOSucceeded(status, messages)
        if succeeded { stepSeconds.append(Date().timeIntervalSince(step.process.started)) }
        return (succeeded, "status \(status): \(lastPart(messages, limit: 600))")
    }

    /// Records a write made outside the steps, not covered by any flush yet:
    /// acknowledged, or failed (the blocks may or may not hold `pattern`).
    func attempted(blocks: Range<Int>, pattern: UInt8, acknowledged: Bool = false) {
        model.attempt(blocks, pattern)
        if acknowledged { model.acknowledge(blocks, pattern) }
    }

    /// Tells the model a flush completed now (a clean stop's final commit).
    func assumeFlushed() { model.flushed() }

    /// Runs `count` steps one after the other; throws if one fails.
    func run(_ count: Int) throws {
        for _ in 0..<count {
            let step = try launch()
            let (succeeded, output) = try finish(step)
            guard succeeded else {
                throw ChainError.setup("workload step failed (seed \(seed)): `\(step.process.commandLine)` \(output)\n\(chain.logs)")
            }
        }
    }

    /// Reads the volume and checks it against the model; on success the
    /// model takes what was read as the new state.
    func verify(strict: Bool) throws -> (problems: [String], unflushedNew: Int, unflushedOld: Int) {
        let image = try readExport(chain.uri(volume), in: chain.scratch)
        guard image.count == model.blockCount * BlockModel.blockSize else {
            return (["read \(image.count) bytes, the volume has \(model.blockCount * BlockModel.blockSize)"], 0, 0)
        }
        let result = model.check(image, strict: strict)
        if result.problems.isEmpty { model.settle(to: image) }
        return result
    }

    /// A random delay in `range` seconds, from the workload's generator.
    func randomDelay(_ range: ClosedRange<Double>) -> Double { Double.random(in: range, using: &generator) }
    func randomInt(_ range: ClosedRange<Int>) -> Int { Int.random(in: range, using: &generator) }
}
