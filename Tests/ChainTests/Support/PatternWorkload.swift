import Foundation

/// A consumer's write-and-flush workload on one volume, one qemu-io process
/// per step: `write A; flush; write B` with fresh patterns at random
/// 4 KiB-aligned places. It keeps a `BlockModel` of what was written and
/// what a completed flush covers, and checks the volume against it.
final class PatternWorkload {
    let chain: Chain
    let volume: String
    let seed: UInt64
    private(set) var model: BlockModel
    private var generator: SeededGenerator
    private var nextPattern: UInt8 = 1
    private var steps = 0
    /// Seconds each successful step took, to report latency.
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

    /// A running step: its process, what it sends, and its second write,
    /// which the model learns of when the step ends.
    struct Step {
        let process: Spawned
        let commands: [String]
        let after: (blocks: Range<Int>, pattern: UInt8)
    }

    /// Starts a step; its first write is recorded as attempted.
    func launch() throws -> Step {
        var writes: [(blocks: Range<Int>, pattern: UInt8)] = []
        for _ in 0..<2 {
            let count = Int.random(in: 1...maxBlocks, using: &generator)
            let first = Int.random(in: 0...(model.blockCount - count), using: &generator)
            writes.append((first..<(first + count), nextPattern))
            nextPattern = nextPattern == 255 ? 1 : nextPattern + 1
        }
        let commands = [Self.command(writes[0]), "flush", Self.command(writes[1])]
        model.attempt(writes[0].blocks, writes[0].pattern)
        steps += 1
        let process = try launchQemuIO(chain.uri(volume), commands, logPath: chain.scratch.file("step-\(steps).log"))
        return Step(process: process, commands: commands, after: writes[1])
    }

    private static func command(_ write: (blocks: Range<Int>, pattern: UInt8)) -> String {
        "write -P 0x\(String(write.pattern, radix: 16)) \(write.blocks.lowerBound * BlockModel.blockSize) \(write.blocks.count * BlockModel.blockSize)"
    }

    /// Waits (bounded) for a step. When every command succeeded, the first
    /// write and everything before it count as covered by the flush, and
    /// the second write as acknowledged but not flushed. When the step
    /// failed, either write may or may not have happened. Returns whether
    /// it succeeded, and its output.
    @discardableResult
    func finish(_ step: Step, timeout: Double = 60) throws -> (succeeded: Bool, output: String) {
        guard let status = step.process.waitForExit(seconds: timeout) else {
            step.process.kill9()
            throw ChainError.timedOut(command: step.process.commandLine, seconds: timeout, output: lastPart(step.process.log))
        }
        let output = step.process.log
        unlink(step.process.logPath)
        let succeeded = qemuIOSucceeded(status, output)
        if succeeded {
            model.acknowledgeAll()
            model.flushed()
            model.attempt(step.after.blocks, step.after.pattern)
            model.acknowledgeAll()
            stepSeconds.append(Date().timeIntervalSince(step.process.started))
        } else {
            model.attempt(step.after.blocks, step.after.pattern)
        }
        return (succeeded, "status \(status): \(lastPart(output, limit: 600))")
    }

    /// Records a write made outside the steps that failed or whose outcome
    /// is unknown: the blocks may or may not hold `pattern`.
    func attempted(blocks: Range<Int>, pattern: UInt8) {
        model.attempt(blocks, pattern)
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
