import Foundation
import Testing

/// Daemons killed with SIGKILL in the middle of a consumer's write-and-flush
/// workload, at random moments (repeatable from the seed in messages).
@Suite("crash suite") struct CrashTests {
    static let volumes = [VolumeSpec(name: "vm1", size: 16 * mebibyte)]
    static let twoVolumes = volumes + [VolumeSpec(name: "vm2", size: 16 * mebibyte)]

    private func expectClean(
        _ result: (problems: [String], unflushedNew: Int, unflushedOld: Int), _ what: String, _ workload: PatternWorkload,
        sourceLocation: SourceLocation = #_sourceLocation
    ) {
        #expect(workload.unreadableSteps.isEmpty, "qemu-io output the model could not follow: \(workload.unreadableSteps)", sourceLocation: sourceLocation)
        #expect(result.problems.isEmpty, "\(what) (seed \(workload.seed)):\n\(result.problems.joined(separator: "\n"))\n\(workload.chain.logs)",
                sourceLocation: sourceLocation)
    }

    @Test("kill -9 cryptd during writes and flushes on two volumes: the pool reopens, flushed data is exact, unflushed blocks old or new")
    func cryptdKilled() throws {
        let clock = Stopwatch()
        // Frequent checkpoints, so the kills also land in checkpoints.
        let chain = try Chain(volumes: Self.twoVolumes, cryptdOptions: ["--checkpoint-records", "100"])
        defer { chain.shutdown() }
        clock.lap("setup")
        let seed = freshSeed()
        let workloads = try [
            PatternWorkload(chain: chain, volume: "vm1", seed: seed), PatternWorkload(chain: chain, volume: "vm2", seed: seed &+ 1),
        ]
        var (new, old, interrupted) = (0, 0, 0)
        let rounds = 8
        for round in 1...rounds {
            for workload in workloads { try workload.run(workload.randomInt(1...3)) }
            clock.lap("steps")
            // Eight writes with flushes between them on each volume at once,
            // killed at a random moment.
            let steps = try workloads.map { try $0.launch(writes: 8) }
            usleep(UInt32(workloads[0].randomDelay(0.0...0.4) * 1_000_000))
            chain.killCryptd()
            for (workload, step) in zip(workloads, steps) where !(try workload.finish(step).succeeded) { interrupted += 1 }
            clock.lap("kill")
            do {
                try chain.startCryptd()
                clock.lap("restart")
            } catch {
                Issue.record("round \(round) (seed \(seed)): cryptd did not come back after kill -9: \(error)")
                return
            }
            for workload in workloads {
                let result = try workload.verify(strict: false)
                expectClean(result, "round \(round), \(workload.volume), after kill -9 of cryptd and a restart", workload)
                new += result.unflushedNew
                old += result.unflushedOld
                if !result.problems.isEmpty { return }
            }
            clock.lap("verify")
        }
        // After all that, a clean stop leaves a pool that authenticates end to end.
        #expect(chain.stopCryptd() == 0)
        let verify = try run([try Tools.built("bulkhead"), "verify", chain.storage, "--key-file", chain.keyFile, "--state-dir", chain.stateDirectory], timeout: 120)
        #expect(verify.succeeded && verify.output.contains(": 0 integrity failures"), "\(verify)")
        clock.lap("bulkhead verify")
        print("cryptd kill -9 (seed \(seed)): \(interrupted)/\(2 * rounds) steps interrupted; blocks written after the last flush found new \(new), old \(old); \(clock.summary)")
    }

    @Test("SIGTERM to cryptd during writes and flushes: it exits 0 at once and every acknowledged write is durable")
    func cryptdStoppedDuringWorkload() throws {
        let chain = try Chain(volumes: Self.volumes, cryptdOptions: ["--checkpoint-records", "100"])
        defer { chain.shutdown() }
        let workload = try PatternWorkload(chain: chain, volume: "vm1")
        for round in 1...3 {
            try workload.run(workload.randomInt(1...3))
            let step = try workload.launch(writes: 8)
            usleep(UInt32(workload.randomDelay(0.0...0.4) * 1_000_000))
            let started = Date()
            let status = chain.stopCryptd()
            let seconds = Date().timeIntervalSince(started)
            #expect(status == 0, "round \(round): cryptd exited with \(status.map(String.init) ?? "nothing") on SIGTERM\n\(chain.logs)")
            #expect(seconds < 10, "round \(round): cryptd took \(seconds) s to stop")
            try workload.finish(step)
            // The final commit on SIGTERM covers every write acknowledged before it.
            workload.assumeFlushed()
            try chain.startCryptd()
            expectClean(try workload.verify(strict: true), "round \(round), after SIGTERM during a step and a restart", workload)
        }
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
        // qemu-io flushes when it closes the volume, so a step that ended
        // well is durable even through kill -9.
        try workload.run(2)
        chain.killCryptd()
        try chain.startCryptd()
        expectClean(try workload.verify(strict: true), "after kill -9 of cryptd following completed steps", workload)
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

    @Test("the crash checks can fail: a block changed behind the model's back is reported")
    func modelCatchesChanges() throws {
        let chain = try Chain(volumes: Self.volumes)
        defer { chain.shutdown() }
        let workload = try PatternWorkload(chain: chain, volume: "vm1")
        try workload.run(3)
        expectClean(try workload.verify(strict: true), "before the change", workload)
        // One block overwritten with a pattern the workload never writes.
        let poke = try qemuIO(chain.uri("vm1"), ["write -P 0xff 4096 4096", "write -P 0x80 8192 100"])
        #expect(poke.succeeded, "\(poke)")
        let found = try workload.verify(strict: false)
        #expect(found.problems.contains { $0.hasPrefix("block 1 holds 0xff") }, "\(found.problems)")
        #expect(found.problems.contains { $0.hasPrefix("block 2 is torn") }, "\(found.problems)")
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
