import Foundation
import Testing

/// Daemons killed with SIGKILL in the middle of a consumer's write-and-flush
/// workload, at random moments (repeatable from the seed in messages).
@Suite("crash suite") struct CrashTests {
    static let volumes = [VolumeSpec(name: "vm1", size: 16 * mebibyte)]

    private func expectClean(
        _ result: (problems: [String], unflushedNew: Int, unflushedOld: Int), _ what: String, _ workload: PatternWorkload,
        sourceLocation: SourceLocation = #_sourceLocation
    ) {
        #expect(result.problems.isEmpty, "\(what) (seed \(workload.seed)):\n\(result.problems.joined(separator: "\n"))\n\(workload.chain.logs)",
                sourceLocation: sourceLocation)
    }

    @Test("kill -9 cryptd during writes and flushes: the pool reopens, flushed data is exact, unflushed blocks old or new")
    func cryptdKilled() throws {
        // Frequent checkpoints, so the kills also land in checkpoints.
        let clock = Stopwatch()
        let chain = try Chain(volumes: Self.volumes, cryptdOptions: ["--checkpoint-records", "100"])
        defer { chain.shutdown() }
        clock.lap("setup")
        let workload = try PatternWorkload(chain: chain, volume: "vm1")
        var (new, old, failedSteps) = (0, 0, 0)
        let rounds = 8
        for round in 1...rounds {
            try workload.run(workload.randomInt(1...5))
            clock.lap("steps")
            // Eight writes with flushes between them, killed at a random moment.
            let step = try workload.launch(writes: 8)
            usleep(UInt32(workload.randomDelay(0.0...0.4) * 1_000_000))
            chain.killCryptd()
            let (succeeded, _) = try workload.finish(step)
            if !succeeded { failedSteps += 1 }
            clock.lap("kill")
            do {
                try chain.startCryptd()
                clock.lap("restart")
            } catch {
                Issue.record("round \(round) (seed \(workload.seed)): cryptd did not come back after kill -9: \(error)")
                return
            }
            let result = try workload.verify(strict: false)
            clock.lap("verify")
            expectClean(result, "round \(round), after kill -9 of cryptd and a restart", workload)
            new += result.unflushedNew
            old += result.unflushedOld
            if !result.problems.isEmpty { return }
        }
        // After all that, a clean stop leaves a pool that authenticates end to end.
        #expect(chain.stopCryptd() == 0)
        let verify = try run([try Tools.built("bulkhead"), "verify", chain.storage, "--key-file", chain.keyFile, "--state-dir", chain.stateDirectory], timeout: 120)
        #expect(verify.succeeded && verify.output.contains(": 0 integrity failures"), "\(verify)")
        clock.lap("bulkhead verify")
        print("cryptd kill -9 (seed \(workload.seed)): \(failedSteps)/\(rounds) steps interrupted; unflushed blocks found new \(new), old \(old); \(clock.summary)")
    }

    @Test("kill -9 storaged during writes and flushes, restarted at once: the consumer sees latency, not errors")
    func storagedRestarted() throws {
        let chain = try Chain(volumes: Self.volumes, cryptdOptions: ["--checkpoint-records", "100", "--retry-window", "20"])
        defer { chain.shutdown() }
        let workload = try PatternWorkload(chain: chain, volume: "vm1")
        var outages: [String] = []
        for round in 1...4 {
            try workload.run(workload.randomInt(1...4))
            let step = try workload.launch(writes: 6)
            usleep(UInt32(workload.randomDelay(0.0...0.3) * 1_000_000))
            chain.killStoraged()
            let down = workload.randomDelay(0.1...1.0)
            usleep(UInt32(down * 1_000_000))
            try chain.startStoraged()
            let (succeeded, output) = try workload.finish(step)
            #expect(succeeded, "round \(round) (seed \(workload.seed)): the consumer saw an error across a storage restart: \(output)\n\(chain.logs)")
            #expect(chain.cryptd?.isRunning == true, "cryptd died across a storage restart\n\(chain.logs)")
            outages.append(String(format: "%.2f s down, step took %.2f s", down, workload.stepSeconds.last ?? -1))
            if !succeeded { return }
        }
        try workload.run(2)
        expectClean(try workload.verify(strict: true), "live cryptd after storage restarts", workload)

        #expect(chain.stopCryptd() == 0, "\(chain.logs)")
        try chain.startCryptd()
        expectClean(try workload.verify(strict: true), "after a cryptd restart (SIGTERM commits everything acknowledged)", workload)
        print("storaged kill -9 + restart (seed \(workload.seed)): \(outages.joined(separator: "; "))")
    }

    @Test("kill -9 storaged for good: requests fail within --retry-window, cryptd stays up and answers handshakes")
    func storagedGone() throws {
        let window = 3.0
        let chain = try Chain(volumes: Self.volumes, cryptdOptions: ["--retry-window", "\(window)"])
        defer { chain.shutdown() }
        let workload = try PatternWorkload(chain: chain, volume: "vm1")
        // Per request, on top of the window: reconnect backoff (at most 1 s),
        // a handshake, qemu-io start-up, a loaded machine.
        let bound = window + 4
        for round in 1...2 {
            try workload.run(workload.randomInt(2...4))
            if round == 1 {
                // Killed while a step runs: each of its three requests fails
                // (or had finished) within the bound.
                let step = try workload.launch()
                usleep(UInt32(workload.randomDelay(0.0...0.05) * 1_000_000))
                chain.killStoraged()
                let (succeeded, output) = try workload.finish(step, timeout: 60)
                let seconds = Date().timeIntervalSince(step.process.started)
                #expect(succeeded || seconds <= 3 * bound, "round 1: the step failed only after \(seconds) s, more than 3 × \(bound) s: \(output)")
            } else {
                // Killed while idle, with a write acknowledged and not yet
                // flushed: the flush must fail, it cannot make that write
                // durable. nbdsh, not qemu-io: QEMU flushes when it closes
                // the device, and skips a flush when it has written nothing.
                let nbdsh = try Tools.nbdsh() + ["-u", chain.uri("vm1"), "-c"]
                try runChecked(nbdsh + ["h.pwrite(b'\\xfd' * 65536, 2 * 1024 * 1024)"])
                workload.attempted(blocks: 512..<528, pattern: 0xfd, acknowledged: true)
                chain.killStoraged()
                let flush = try run(nbdsh + ["h.flush()"], timeout: 60)
                #expect(!flush.succeeded, "round 2: a flush succeeded with the storage domain gone and a write pending: \(flush)")
                #expect(flush.seconds <= bound, "round 2: the flush failed only after \(flush.seconds) s, more than \(bound) s: \(flush)")
            }
            // With the storage domain gone, a write and a read of written
            // blocks each fail within the bound.
            let write = try qemuIO(chain.uri("vm1"), ["write -P 0xfe 1M 64k"], timeout: 60)
            workload.attempted(blocks: 256..<272, pattern: 0xfe)
            #expect(!write.succeeded && write.output.contains("failed"), "round \(round): a write succeeded with the storage domain gone: \(write)")
            #expect(write.seconds <= bound, "round \(round): the write failed only after \(write.seconds) s, more than \(bound) s: \(write)")
            let read = try qemuIO(chain.uri("vm1"), ["read 0 16M"], timeout: 60)
            #expect(!read.succeeded, "round \(round): reading written blocks succeeded with the storage domain gone: \(read)")
            #expect(read.seconds <= bound, "round \(round): the read failed only after \(read.seconds) s, more than \(bound) s: \(read)")

            #expect(chain.cryptd?.isRunning == true, "round \(round): cryptd died with the storage domain\n\(chain.logs)")
            let hello = Result { try HandshakeProbe.go(socket: chain.volumeSocket("vm1"), export: "vm1", timeout: 5) }
            #expect((try? hello.get()) == .opened(size: UInt64(16 * mebibyte)), "round \(round): cryptd's volume socket no longer answers a handshake: \(hello)\n\(chain.logs)")
            let info = try run(["nbdinfo", "--size", chain.uri("vm1")], timeout: 20)
            #expect(info.succeeded, "\(info)")

            // The storage domain comes back: the chain serves again and the data checks out.
            try chain.startStoraged()
            try workload.run(2)
            expectClean(try workload.verify(strict: true), "round \(round): after the storage domain came back", workload)
        }
        #expect(chain.stopCryptd() == 0, "\(chain.logs)")
        try chain.startCryptd()
        expectClean(try workload.verify(strict: true), "after a cryptd restart (SIGTERM commits everything acknowledged)", workload)
    }

    /// proto.md: NBD_ESHUTDOWN means the server is shutting down, and "if
    /// the client receives an NBD_ESHUTDOWN error it MUST initiate a soft
    /// disconnect". cryptd is not shutting down when the storage domain is
    /// away, so a request that fails for that reason is an I/O error
    /// (NBD_EIO, errno EIO in the client), and the consumer keeps its
    /// connection for when storage returns.
    @Test("a request failed by a storage outage is NBD_EIO, not NBD_ESHUTDOWN")
    func storageOutageIsIOError() throws {
        let chain = try Chain(volumes: Self.volumes, cryptdOptions: ["--retry-window", "1"])
        defer { chain.shutdown() }
        chain.killStoraged()
        let write = try qemuIO(chain.uri("vm1"), ["write -P 0x42 0 4k"], timeout: 60)
        #expect(!write.succeeded, "\(write)")
        #expect(write.output.contains("Input/output error"), "the consumer was not told EIO: \(write)")
        #expect(!write.output.contains("transport endpoint shutdown"), "cryptd replied NBD_ESHUTDOWN, which obliges the consumer to disconnect: \(write)")
    }
}
