import Foundation
import TestSupport
import Testing
import Threads

/// Crash-point replay: the writes and flushes the crypt pool sends during a
/// recorded workload are replayed up to many crash points (every flush
/// boundary, and random points where any subset of the writes since the
/// last flush reached the disk), and each image must open with the anchor
/// a real crypt domain would hold, scrub clean, hold every write a
/// completed flush covered, and keep working after recovery.
@Suite(.serialized) struct CrashReplayTests {
    /// Random crash points per workload; `CRASH_POINTS` raises it for longer runs.
    static let randomPoints = Int(ProcessInfo.processInfo.environment["CRASH_POINTS"] ?? "") ?? 300
    static let workloadSeeds: [UInt64] = (ProcessInfo.processInfo.environment["CRASH_SEEDS"] ?? "1")
        .split(separator: ",").compactMap { UInt64($0) }

    @Test func replayCrashPoints() throws {
        var total = 0
        var recovered = 0
        var boundaries = 0
        var random = 0
        var lost = 0
        var scrubFailures = 0
        var notYetAPool = 0
        var postRecovery = 0
        var flushedWrites = 0
        let started = monotonicSeconds()
        for seed in Self.workloadSeeds {
            let workload = try CrashWorkload(seed: seed)
            let operations = workload.device.operations
            let replayer = CrashReplayer(operations, size: CrashWorkload.deviceSize)
            var points = replayer.flushBoundaries.map { CrashPoint(index: $0, cacheSeed: nil) }
            boundaries += points.count
            var generator = SeededGenerator(seed: seed * 7919)
            for _ in 0..<Self.randomPoints {
                points.append(CrashPoint(index: Int.random(in: 1...operations.count, using: &generator), cacheSeed: generator.next()))
            }
            random += Self.randomPoints
            flushedWrites += workload.consumerWrites
            points.sort { $0.index < $1.index }
            for (number, point) in points.enumerated() {
                let outcome = replayer.check(point, postRecovery: number % 2 == 0)
                total += 1
                if outcome.recovered { recovered += 1 }
                if outcome.notYetAPool { notYetAPool += 1 }
                if outcome.postRecoveryChecked { postRecovery += 1 }
                lost += outcome.lostWrites
                scrubFailures += outcome.scrubFailures
                for problem in outcome.problems.prefix(3) { Issue.record(Comment(rawValue: "workload \(seed), \(problem)")) }
            }
            print(
                "crash workload \(seed): \(operations.count) operations recorded, \(workload.consumerWrites) block writes, "
                    + "\(workload.durablePoints) durable points")
        }
        let seconds = ((monotonicSeconds() - started) * 10).rounded() / 10
        print(
            "crash points: \(recovered)/\(total) recovered (\(boundaries) flush boundaries, \(random) random with volatile-cache subsets, "
                + "\(notYetAPool) before the pool existed); flushed writes lost: \(lost); scrub failures: \(scrubFailures); "
                + "post-recovery write and reopen: \(postRecovery) checked; \(seconds) s")
        #expect(recovered == total)
        #expect(lost == 0)
        #expect(scrubFailures == 0)
    }
}
