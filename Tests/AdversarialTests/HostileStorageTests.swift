import BlockDevice
import Foundation
import PoolFormat
import TestSupport
import Testing
import Threads

@testable import CryptPool

/// The crypt pool over a storage domain that misbehaves on purpose, served
/// by the real NBD server and reached through the real NBD client. Every
/// scenario states what the consumer must see, and checks that no read
/// ever returns data other than what was written, that nothing crashes and
/// that every wait ends within seconds.
@Suite(.serialized) struct HostileStorageTests {
    /// Rounds of the randomised scenarios; `HOSTILE_ROUNDS` raises it for longer runs.
    static let rounds = max(1, Int(ProcessInfo.processInfo.environment["HOSTILE_ROUNDS"] ?? "") ?? 1)

    @Test func flipBitsInEveryRead() {
        scenario("flip bits in every read", expected: "error to the consumer, refusal at open, reads correct once honest") { run in
            let setup = try HostileSetup()
            setup.storage.device.misbehaviour = .flipBits(probability: 1)
            let hostile = setup.consumer.checkAll(setup.blocksToRead)
            run.require(hostile.failed >= Int(setup.written), "every written block must fail, got \(hostile)")
            let opened = setup.reopen()
            run.require(!opened.succeeded, "open must be refused when every block is corrupted")
            run.observe("open: \(opened.poolError.map { "refused (\($0))" } ?? "opened")")

            setup.storage.device.misbehaviour = .honest
            let honest = setup.consumer.checkAll(setup.blocksToRead)
            run.require(honest.correct == setup.blocksToRead.count, "once honest, every read must succeed: \(honest)")
            try checkReopens(setup, run)
            run.tally = setup.consumer.tally
        }
    }

    @Test func flipBitsInSomeReads() {
        scenario("flip bits in some reads", expected: "each read correct or an error; each open refused or correct") { run in
            let setup = try HostileSetup(seed: 2)
            setup.storage.device.misbehaviour = .flipBits(probability: 0.3)
            var passes = ReadTally()
            for _ in 0..<4 {
                let pass = setup.consumer.checkAll(setup.blocksToRead)
                passes.correct += pass.correct
                passes.failed += pass.failed
            }
            run.require(passes.failed > 0 && passes.correct > 0, "some reads should fail and some succeed: \(passes)")
            var refused = 0
            var opened = 0
            for _ in 0..<4 {
                switch setup.reopen() {
                case .failure: refused += 1
                case .success(let pool):
                    opened += 1
                    let consumer = try setup.consumer(of: pool)
                    _ = consumer.checkAll(setup.blocksToRead, .afterReopen)
                }
            }
            run.observe("opens: \(refused) refused, \(opened) opened")
            run.tally = setup.consumer.tally
        }
    }

    @Test func serveAnotherBlock() {
        scenario("serve another block's contents", expected: "error to the consumer, refusal at open") { run in
            let setup = try HostileSetup(seed: 3)
            setup.storage.device.misbehaviour = .serveNeighbour
            let hostile = setup.consumer.checkAll(setup.blocksToRead)
            run.require(hostile.failed >= Int(setup.written), "every written block must fail: \(hostile)")
            let opened = setup.reopen()
            run.require(!opened.succeeded, "open must be refused")
            run.observe("open: \(opened.poolError.map { "refused (\($0))" } ?? "opened")")
            setup.storage.device.misbehaviour = .honest
            try checkReopens(setup, run)
            run.tally = setup.consumer.tally
        }
    }

    @Test func serveOlderVersions() {
        scenario("serve an older version of each block", expected: "error to the consumer, refusal at open") { run in
            let setup = try HostileSetup(seed: 4)
            setup.storage.device.misbehaviour = .servePreviousVersion(of: 0..<UInt64.max)
            let hostile = setup.consumer.checkAll(setup.blocksToRead)
            run.require(hostile.failed >= Int(setup.written), "every written block must fail: \(hostile)")
            let opened = setup.reopen()
            run.require(!opened.succeeded, "open must be refused")
            run.observe("open: \(opened.poolError.map { "refused (\($0))" } ?? "opened")")
            setup.storage.device.misbehaviour = .honest
            try checkReopens(setup, run)
            run.tally = setup.consumer.tally
        }
    }

    @Test func serveOlderSuperblocks() {
        scenario(
            "serve older superblocks only",
            expected: "refusal at open with the anchor; the running pool unaffected"
        ) { run in
            let setup = try HostileSetup(seed: 11)
            let slots = PoolLayout.superblockSlots
            // A commit per slot more, so that every slot's previous version
            // is an authentic older superblock rather than the blank slot
            // of a fresh pool (which would only make the pool unreadable).
            for block in 0..<UInt64(slots.count) {
                try setup.consumer.write(block, seed: 700 + block)
                try setup.consumer.flush()
            }
            setup.storage.device.misbehaviour = .servePreviousVersion(of: slots[0]..<(slots[slots.count - 1] + 1))
            let opened = setup.reopen()
            run.require(opened.poolError?.isRollback == true, "open must be refused as a rollback, got \(opened)")
            run.observe("open with the anchor: \(opened.poolError.map { "refused (\($0))" } ?? "opened")")
            let running = setup.consumer.checkAll(setup.blocksToRead)
            run.require(running.correct == setup.blocksToRead.count, "the running pool reads correctly: \(running)")
            let blank = MemoryTrustAnchor()
            if case .success(let old) = setup.reopen(anchor: blank) {
                // Stale but authentic: the documented trust-on-first-use limit.
                run.observe("open without an anchor: generation \(old.generation) of \(setup.pool.generation) (documented limit)")
            }
            run.tally = setup.consumer.tally
        }
    }

    @Test func rollBackTheWholeImage() {
        scenario(
            "roll back the whole image to a snapshot",
            expected: "errors for blocks written since, refusal at open with the anchor"
        ) { run in
            let setup = try HostileSetup(seed: 5)
            let snapshot = setup.storage.device.snapshot()
            let generation = setup.pool.generation
            for block in UInt64(8)..<24 { try setup.consumer.write(block, seed: 900 + block) }
            for block in setup.written..<(setup.written + 8) { try setup.consumer.write(block, seed: 950 + block) }
            try setup.consumer.flush()
            try setup.storage.device.rollBack(to: snapshot)

            let hostile = setup.consumer.checkAll(setup.blocksToRead)
            run.require(hostile.failed >= 24, "the 24 blocks written after the snapshot must fail: \(hostile)")
            let opened = setup.reopen()
            run.require(opened.poolError?.isRollback == true, "open must be refused as a rollback, got \(opened)")
            run.observe("open with the anchor: \(opened.poolError.map { "refused (\($0))" } ?? "opened")")

            // Without the anchor the rollback cannot be seen: the documented
            // trust-on-first-use limit. The pool opens at the snapshot's generation.
            let blank = MemoryTrustAnchor()
            if case .success(let old) = setup.reopen(anchor: blank) {
                run.require(old.generation == generation, "without an anchor the snapshot's generation \(generation) opens, got \(old.generation)")
                run.observe("open without an anchor: the snapshot's generation \(old.generation) (documented limit)")
            } else {
                run.require(false, "without an anchor the snapshot should open")
            }
            run.tally = setup.consumer.tally
        }
    }

    @Test func dropWritesWhileAcknowledging() {
        scenario("drop writes while acknowledging them", expected: "errors for the dropped blocks, refusal at open") { run in
            let setup = try HostileSetup(seed: 6)
            setup.storage.device.misbehaviour = .dropWrites
            for block in UInt64(0)..<16 { try setup.consumer.write(block, seed: 700 + block) }
            try setup.consumer.flush()
            run.require(setup.storage.device.counters.faults > 0, "writes should have been dropped")
            let hostile = setup.consumer.checkAll(setup.blocksToRead)
            run.require(hostile.failed >= 16, "the 16 dropped blocks must fail: \(hostile)")
            let opened = setup.reopen()
            run.require(opened.poolError?.isRollback == true, "open must be refused as a rollback, got \(opened)")
            run.observe("open: \(opened.poolError.map { "refused (\($0))" } ?? "opened")")
            run.tally = setup.consumer.tally
        }
    }

    @Test func acknowledgeFlushWithoutPersisting() {
        scenario(
            "acknowledge FLUSH without persisting",
            expected: "reads correct while cached; after the cache is lost, errors and refusal at open"
        ) { run in
            let setup = try HostileSetup(seed: 7)
            setup.storage.device.misbehaviour = .volatileCache
            for block in UInt64(0)..<16 { try setup.consumer.write(block, seed: 600 + block) }
            try setup.consumer.flush()
            let cached = setup.consumer.checkAll(setup.blocksToRead)
            run.require(cached.correct == setup.blocksToRead.count, "reads served from the cache are correct: \(cached)")
            setup.storage.device.loseVolatileState()
            setup.storage.device.misbehaviour = .honest
            let lost = setup.consumer.checkAll(setup.blocksToRead)
            run.require(lost.failed >= 16, "the 16 lost blocks must fail: \(lost)")
            let opened = setup.reopen()
            run.require(opened.poolError?.isRollback == true, "open must be refused as a rollback, got \(opened)")
            run.observe("open: \(opened.poolError.map { "refused (\($0))" } ?? "opened")")
            run.tally = setup.consumer.tally
        }
    }

    @Test func reorderWritesAcrossFlush() {
        scenario(
            "reorder writes across FLUSH, then lose the rest",
            expected: "reads correct while cached; each open refused, or reads correct or an error"
        ) { run in
            var refused = 0
            var opened = 0
            var scrubFailures = 0
            var tally = ReadTally()
            for seed in UInt64(10)..<UInt64(10 + 6 * Self.rounds) {
                let setup = try HostileSetup(written: 24, seed: seed)
                setup.storage.device.misbehaviour = .reorderAcrossFlush
                for round in UInt64(0)..<3 {
                    for block in UInt64(0)..<8 { try setup.consumer.write(round * 8 + block, seed: seed * 1000 + round * 8 + block + 1) }
                    try setup.consumer.flush()
                }
                let cached = setup.consumer.checkAll(setup.blocksToRead)
                run.require(cached.correct == setup.blocksToRead.count, "reads served with the cache are correct: \(cached)")
                setup.storage.device.loseVolatileState()
                setup.storage.device.misbehaviour = .honest
                switch setup.reopen() {
                case .failure: refused += 1
                case .success(let pool):
                    opened += 1
                    // Storage that broke the FLUSH contract may have kept the
                    // superblock and lost data: errors are fair, wrong data is not.
                    scrubFailures += pool.verify().failures.count
                    _ = try setup.consumer(of: pool).checkAll(setup.blocksToRead, .afterReopen)
                }
                tally.correct += setup.consumer.tally.correct
                tally.failed += setup.consumer.tally.failed
                tally.wrong += setup.consumer.tally.wrong
            }
            run.observe("\(6 * Self.rounds) runs: \(refused) opens refused, \(opened) opened with \(scrubFailures) blocks failing the scrub")
            run.tally = tally
        }
    }

    @Test func returnErrorsOnEveryRequest() {
        scenario("return EIO on every request", expected: "error to the consumer and at open; retry succeeds once honest") { run in
            let setup = try HostileSetup(seed: 8)
            try setup.consumer.write(5, seed: 4241)
            setup.storage.device.misbehaviour = .failRequests(probability: 1)
            let reads = setup.consumer.checkAll(setup.blocksToRead)
            run.require(reads.failed >= Int(setup.written), "every stored block must fail: \(reads)")
            run.require((try? setup.consumer.write(3, seed: 4242)) == nil, "a write must fail")
            run.require((try? setup.consumer.flush()) == nil, "a flush must fail")
            run.require(!setup.reopen().succeeded, "open must fail")

            setup.storage.device.misbehaviour = .honest
            try setup.consumer.write(3, seed: 4243)
            try setup.consumer.flush()
            let honest = setup.consumer.checkAll(setup.blocksToRead)
            run.require(honest.correct == setup.blocksToRead.count, "once honest, every read must succeed: \(honest)")
            try checkReopens(setup, run)
            run.tally = setup.consumer.tally
        }
    }

    @Test(arguments: [0.1, 0.25, 0.4])
    func returnErrorsIntermittently(probability: Double) {
        scenario(
            "return EIO on \(Int(probability * 100))% of requests",
            expected: "some operations fail; retried, every one succeeds; reopens and scrubs clean"
        ) { run in
            // Over 128 MiB, so that the space map has several bitmap blocks
            // and a failed checkpoint can leave some of them unchanged.
            // The crypt domain restarts first: in a new session the first
            // checkpoint into each space map region rewrites all of it.
            var failures = 0
            for round in 0..<Self.rounds {
                let seed = UInt64(probability * 100) + UInt64(round) * 1000
                let setup = try HostileSetup(seed: 20 + seed, checkpointRecords: 16, storageSize: 160 << 20)
                let restarted = try setup.reopen(configuration: PoolConfiguration(checkpointRecords: 16)).get()
                _ = try setup.consumer(of: restarted)
                setup.storage.device.misbehaviour = .failRequests(probability: probability)
                var random = SeededGenerator(seed: seed)
                func retry(_ body: () throws(BlockDeviceError) -> Void) throws {
                    for _ in 0..<50 {
                        do throws(BlockDeviceError) { return try body() } catch { failures += 1 }
                    }
                    throw BlockDeviceError.io(operation: "retried 50 times", errno: 5)
                }
                for step in UInt64(0)..<80 {
                    let block = UInt64.random(in: 0..<64, using: &random)
                    try retry { () throws(BlockDeviceError) in try setup.consumer.write(block, seed: 30_000 + step) }
                    if step % 8 == 7 { try retry { () throws(BlockDeviceError) in try setup.consumer.flush() } }
                    if step % 4 == 3 { setup.consumer.check(UInt64.random(in: 0..<64, using: &random)) }
                }
                try retry { () throws(BlockDeviceError) in try setup.consumer.flush() }
                setup.storage.device.misbehaviour = .honest
                let honest = setup.consumer.checkAll(0..<64)
                run.require(honest.correct == 64, "round \(round): once honest, every read must succeed: \(honest)")
                try checkReopens(setup, run)
                run.tally.correct += setup.consumer.tally.correct
                run.tally.failed += setup.consumer.tally.failed
                run.tally.wrong += setup.consumer.tally.wrong
            }
            run.observe("\(Self.rounds) round(s), \(failures) operations failed and were retried")
            run.require(failures > 0, "some operations should have failed")
        }
    }

    @Test func stallReadsForever() {
        scenario("stall reads forever", expected: "error to the consumer within the retry window; retry succeeds once released") { run in
            let setup = try HostileSetup(seed: 9, requestTimeout: 0.5, retryWindow: 1.5)
            setup.storage.device.misbehaviour = .stallReads
            let start = monotonicSeconds()
            let outcome = setup.consumer.check(0)
            let waited = monotonicSeconds() - start
            run.require(outcome != .correct && outcome != .wrong, "a stalled read must fail, got \(outcome)")
            run.require(waited < 6, "the stalled read must fail within seconds, took \(waited) s")
            run.observe("stalled read failed after \((waited * 10).rounded() / 10) s")
            setup.storage.device.releaseStalls()
            let honest = setup.consumer.checkAll(setup.blocksToRead)
            run.require(honest.correct == setup.blocksToRead.count, "after release every read must succeed: \(honest)")
            run.tally = setup.consumer.tally
        }
    }

    @Test func stallFlushForever() {
        scenario("stall FLUSH forever", expected: "FLUSH fails within the retry window; retry succeeds once released; data durable") { run in
            let setup = try HostileSetup(seed: 10, requestTimeout: 0.5, retryWindow: 1.5)
            setup.storage.device.misbehaviour = .stallFlushes
            for block in UInt64(0)..<8 { try setup.consumer.write(block, seed: 800 + block) }
            let start = monotonicSeconds()
            let flushed = Result { () throws(BlockDeviceError) in try setup.consumer.flush() }
            let waited = monotonicSeconds() - start
            run.require(!(flushed.isSuccess), "a stalled flush must fail")
            run.require(waited < 6, "the stalled flush must fail within seconds, took \(waited) s")
            run.observe("stalled flush failed after \((waited * 10).rounded() / 10) s")
            setup.storage.device.releaseStalls()
            try setup.consumer.flush()
            let honest = setup.consumer.checkAll(setup.blocksToRead)
            run.require(honest.correct == setup.blocksToRead.count, "after release every read must succeed: \(honest)")
            try checkReopens(setup, run)
            run.tally = setup.consumer.tally
        }
    }
}

extension Result {
    var isSuccess: Bool {
        if case .success = self { return true }
        return false
    }
}

/// With honest storage again: the pool reopens with the anchor, scrubs
/// clean and every block reads as the consumer wrote and flushed it.
func checkReopens(_ setup: HostileSetup, _ run: ScenarioRun) throws {
    switch setup.reopen() {
    case .failure(let error):
        run.require(false, "with honest storage the pool must reopen: \(error)")
    case .success(let pool):
        let report = pool.verify()
        run.require(report.failures.isEmpty, "the reopened pool must scrub clean: \(report.failures.map(\.description))")
        let reads = try setup.consumer(of: pool).checkAll(setup.blocksToRead, .afterReopen)
        run.require(reads.correct == setup.blocksToRead.count, "after reopening every read must be correct: \(reads)")
    }
}
