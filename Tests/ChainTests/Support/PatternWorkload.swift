import Foundation

/// A consumer's write-and-flush workload on one volume, one qemu-io process
/// per step: `write; flush; write; flush; …; write` with fresh patterns at
/// random 4 KiB-aligned places. It keeps a `BlockModel` of what was written
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
        case flush

        var command: String {
            switch self {
            case .write(let blocks, let pattern):
                "write -P 0x\(String(pattern, radix: 16)) \(blocks.lowerBound * BlockModel.blockSize) \(blocks.count * BlockModel.blockSize)"
            case .flush: "flush"
            }
        }
    }

    /// A running step: its process and its commands.
    struct Step {
        let process: Spawned
        let actions: [Action]
    }

    /// Starts a step of `writes` writes with a flush between each two.
    func launch(writes: Int = 2) throws -> Step {
        var actions: [Action] = []
        for index in 0..<writes {
            if index > 0 { actions.append(.flush) }
            let count = Int.random(in: 1...maxBlocks, using: &generator)
            let first = Int.random(in: 0...(model.blockCount - count), using: &generator)
            actions.append(.write(blocks: first..<(first + count), pattern: nextPattern))
            nextPattern = nextPattern == 255 ? 1 : nextPattern + 1
        }
        steps += 1
        let process = try launchQemuIO(chain.uri(volume), actions.map(\.command), logPath: chain.scratch.file("step-\(steps).log"))
        return Step(process: process, actions: actions)
    }

    /// Which commands of a step succeeded, from qemu-io's output: it runs
    /// every command even after one fails, prints "wrote …" or
    /// "write failed: …" for each write, and for a flush prints only
    /// "flush failed: …". Nil when the output does not fit the commands.
    static func outcomes(of actions: [Action], in output: String) -> [Bool]? {
        var reports = output.split(separator: "\n").filter { $0.hasPrefix("wrote ") || $0.contains(" failed: ") }[...]
        var result: [Bool] = []
        for action in actions {
            switch action {
            case .write:
                guard let report = reports.popFirst() else { return nil }
                if report.hasPrefix("wrote ") {
                    result.append(true)
                } else if report.hasPrefix("write failed: ") {
                    result.append(false)
                } else {
                    return nil
                }
            case .flush:
                if reports.first?.hasPrefix("flush failed: ") == true {
                    reports.removeFirst()
                    result.append(false)
                } else {
                    result.append(true)
                }
            }
        }
        return reports.isEmpty ? result : nil
    }

    /// Waits (bounded) for a step and tells the model what happened, in
    /// order: an acknowledged write is acknowledged, a completed flush
    /// covers every write before it. A failed write may or may not have
    /// happened. If qemu-io could not open the volume, or its output does
    /// not fit, every write counts as maybe-happened and no flush as done.
    /// Returns whether every command succeeded, and the output.
    @discardableResult
    func finish(_ step: Step, timeout: Double = 60) throws -> (succeeded: Bool, output: String) {
        guard let status = step.process.waitForExit(seconds: timeout) else {
            step.process.kill9()
            throw ChainError.timedOut(command: step.process.commandLine, seconds: timeout, output: lastPart(step.process.log))
        }
        let output = step.process.log
        unlink(step.process.logPath)
        let opened = !output.contains("can't open")
        let outcomes = opened ? Self.outcomes(of: step.actions, in: output) : nil
        for (index, action) in step.actions.enumerated() {
            let done = outcomes?[index] ?? false
            switch action {
            case .write(let blocks, let pattern):
                model.attempt(blocks, pattern)
                if done { model.acknowledge(blocks, pattern) }
            case .flush:
                if done { model.flushed() }
            }
        }
        let succeeded = status == 0 && outcomes?.allSatisfy { $0 } == true && qemuIOSucceeded(status, output)
        if succeeded { stepSeconds.append(Date().timeIntervalSince(step.process.started)) }
        return (succeeded, "status \(status): \(lastPart(output, limit: 600))")
    }

    /// Records a write made outside the steps, not covered by any flush yet:
    /// acknowledged, or failed (the blocks may or may not hold `pattern`).
    func attempted(blocks: Range<Int>, pattern: UInt8, acknowledged: Bool = false) {
        model.attempt(blocks, pattern)
        if acknowledged { model.acknowledge(blocks, pattern) }
    }

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
