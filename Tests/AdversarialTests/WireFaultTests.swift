import BlockDevice
import Logging
import NBDClient
import Testing
import Threads

@testable import CryptPool

/// A pool on memory, formatted and written honestly in process, then served
/// to the crypt side by the scripted wire-level storage domain.
final class WireSetup {
    let memory: MemoryBlockDevice
    let storage: ScriptedStorage
    let consumer: Consumer
    let generation: UInt64
    let written: UInt64 = 32

    init() throws {
        memory = try MemoryBlockDevice(size: 16 << 20)
        let pool = try Pool.format(storage: memory, passphrase: testPassphrase, cost: testCost, anchor: nil).pool
        try pool.createVolume(name: "vm", size: 1 << 20)
        consumer = Consumer(volume: try pool.volume(named: "vm"))
        for block in 0..<written { try consumer.write(block, seed: 70_000 + block) }
        try consumer.flush()
        generation = pool.generation
        storage = try ScriptedStorage(serving: memory)
    }

    /// The crypt side: the pool opened over the NBD client, with the anchor
    /// at the generation written, and short timeouts.
    func open(structured: Bool) throws -> Pool {
        let remote = try RemoteBlockDevice(
            connectingTo: storage.address, export: "pool",
            options: RemoteBlockDevice.Options(
                connection: NBDConnection.Options(
                    structuredReplies: structured, handshakeTimeout: 2, requestTimeout: 0.4, logger: quietLogger("wire-client")),
                retryWindow: 1, initialBackoff: 0.01, maxBackoff: 0.2))
        let pool = try Pool.open(
            storage: remote, secret: .passphrase(testPassphrase), anchor: MemoryTrustAnchor(generation: generation))
        consumer.volume = try pool.volume(named: "vm")
        return pool
    }

    var blocksToRead: Range<UInt64> { 0..<(written + 8) }

    deinit { storage.close() }
}

/// The crypt side against a storage domain that breaks the NBD reply
/// stream: each fault once (the client reconnects and resends: the retry
/// succeeds) and on every reply (the request fails once the retry window
/// has passed, and works again when the storage does).
@Suite(.serialized) struct WireFaultTests {
    static let faults: [WireFault] = [
        .shortReply, .oversizedReply, .duplicatedReply, .unsolicitedReply, .closeMidReply, .misplacedChunk, .garbage, .silence,
    ]

    @Test(arguments: faults, [true, false])
    func brokenReplies(fault: WireFault, structured: Bool) throws {
        // A simple reply has no chunks to misplace.
        guard structured || fault != .misplacedChunk else { return }
        let mode = structured ? "structured" : "simple"
        // These carry the whole, correct reply before the stray bytes, so
        // the read completes; the stray bytes then end the connection.
        let answersFirst = fault == .duplicatedReply || (fault == .oversizedReply && !structured)
        let setup = try WireSetup()
        scenario("wire: \(fault) (\(mode) replies), once", expected: "retry that succeeds: reconnect, resend, correct data") { run in
            setup.storage.arm(fault, budget: 1)
            let pool = try setup.open(structured: structured)
            let reads = setup.consumer.checkAll(setup.blocksToRead, .afterReopen)
            run.require(setup.storage.injected == 1, "the fault should have been injected once, was \(setup.storage.injected)")
            run.require(reads.correct == setup.blocksToRead.count, "every read must succeed after the retry: \(reads)")
            run.require(setup.storage.connections >= 2, "the client should have reconnected")
            run.observe("\(setup.storage.connections) connections")
            run.require(pool.verify().failures.isEmpty, "the pool must scrub clean")
            run.tally = setup.consumer.tally
        }
        let before = (setup.consumer.tally, setup.storage.connections)
        scenario(
            "wire: \(fault) (\(mode) replies), every reply",
            expected: answersFirst
                ? "reads correct from the first reply, the connection dropped at the stray bytes"
                : "error to the consumer within the retry window; reads correct once the storage behaves"
        ) { run in
            setup.storage.arm(fault, budget: .max)
            let start = monotonicSeconds()
            // A failing read runs out the retry window; one is enough.
            let outcomes = (UInt64(0)..<(answersFirst ? 3 : 1)).map { setup.consumer.check($0, .afterReopen) }
            let waited = monotonicSeconds() - start
            let reconnects = setup.storage.connections - before.1
            if answersFirst {
                run.require(reconnects >= 1, "the stray bytes must end the connection")
            } else {
                run.require(!outcomes.contains(.correct), "reads must fail, got \(outcomes)")
            }
            run.require(waited < 6, "reads must end within seconds, took \(waited) s")
            run.observe("\(outcomes.count) read(s) took \((waited * 10).rounded() / 10) s over \(reconnects) new connections")
            setup.storage.arm(.none, budget: 0)
            let reads = setup.consumer.checkAll(setup.blocksToRead, .afterReopen)
            run.require(reads.correct == setup.blocksToRead.count, "every read must succeed once honest: \(reads)")
            var tally = setup.consumer.tally
            tally.correct -= before.0.correct
            tally.failed -= before.0.failed
            tally.wrong -= before.0.wrong
            run.tally = tally
        }
    }

    static let writeFaults: [WireFault] = [
        .shortReply, .oversizedReply, .duplicatedReply, .unsolicitedReply, .closeMidReply, .garbage, .silence,
    ]

    /// The same faults on replies to WRITE and FLUSH. The storage has
    /// carried out each request before its reply breaks; the client resends
    /// it on a new connection, so what matters is that every write the
    /// consumer flushed is on the storage afterwards.
    @Test(arguments: writeFaults)
    func brokenWriteAndFlushReplies(fault: WireFault) throws {
        let setup = try WireSetup()
        /// Opens the storage's contents directly and checks every block.
        func checkStorage(_ run: ScenarioRun) throws {
            let direct = try Pool.open(storage: setup.memory, secret: .passphrase(testPassphrase), anchor: nil)
            run.require(direct.verify().failures.isEmpty, "the storage's pool must scrub clean")
            setup.consumer.volume = try direct.volume(named: "vm")
            let reads = setup.consumer.checkAll(0..<64, .afterReopen)
            run.require(reads.correct == 64, "every flushed write must be on the storage: \(reads)")
        }
        scenario(
            "wire: \(fault) to WRITE and to FLUSH, once each", expected: "retry that succeeds; every flushed write on the storage"
        ) { run in
            _ = try setup.open(structured: true)
            setup.storage.arm(fault, budget: 1, commands: [.write])
            for block in UInt64(40)..<48 { try setup.consumer.write(block, seed: 90_000 + block) }
            setup.storage.arm(fault, budget: 1, commands: [.flush])
            try setup.consumer.flush()
            run.require(setup.storage.injected == 2, "two faults should have been injected, were \(setup.storage.injected)")
            run.observe("\(setup.storage.connections) connections")
            try checkStorage(run)
            run.tally = setup.consumer.tally
        }
        let answersFirst = fault == .duplicatedReply || fault == .oversizedReply
        let before = setup.consumer.tally
        scenario(
            "wire: \(fault) to every WRITE",
            expected: answersFirst
                ? "writes succeed from the first reply, the connection dropped at the stray bytes; all flushed writes on the storage"
                : "the write fails within the retry window; retried once the storage behaves; all flushed writes on the storage"
        ) { run in
            _ = try setup.open(structured: true)
            setup.storage.arm(fault, budget: .max, commands: [.write])
            let start = monotonicSeconds()
            let written = Result { () throws(BlockDeviceError) in try setup.consumer.write(50, seed: 95_000) }
            let waited = monotonicSeconds() - start
            run.require(written.isSuccess == answersFirst, "the write should \(answersFirst ? "succeed" : "fail"), got \(written)")
            run.require(waited < 6, "the write must end within seconds, took \(waited) s")
            run.observe("the write ended after \((waited * 10).rounded() / 10) s")
            setup.storage.arm(.none, budget: 0)
            try setup.consumer.write(50, seed: 95_001)
            try setup.consumer.flush()
            try checkStorage(run)
            var tally = setup.consumer.tally
            tally.correct -= before.correct
            tally.failed -= before.failed
            tally.wrong -= before.wrong
            run.tally = tally
        }
    }

    @Test func errorReplyWithMessage() {
        scenario("wire: EIO error reply with a long message", expected: "error to the consumer, then success") { run in
            let setup = try WireSetup()
            _ = try setup.open(structured: true)
            setup.storage.arm(.errorReply, budget: 1)
            let outcome = setup.consumer.check(2, .afterReopen)
            run.require(outcome != .correct && outcome != .wrong, "the read must fail, got \(outcome)")
            let reads = setup.consumer.checkAll(setup.blocksToRead, .afterReopen)
            run.require(reads.correct == setup.blocksToRead.count, "later reads must succeed: \(reads)")
            run.require(setup.storage.connections == 1, "an error reply is an answer: no reconnect")
            run.tally = setup.consumer.tally
        }
    }
}
