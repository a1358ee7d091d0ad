import Foundation
import TestScratch
import Testing

/// The crash tests' reading of a qemu-io step, checked on real qemu-io runs
/// against an nbdkit whose flush is scripted. qemu-io prints nothing for a
/// `flush`, failed or not; a step once read a flush cut off by the kill of
/// cryptd as done, and so demanded that a discard acknowledged just before
/// it had survived the crash (seed 10003232455070033517, round 5).
@Suite("workload model") struct WorkloadModelTests {
    /// Block 0 written with 0x5, discarded, a flush, then block 2 written
    /// with 0x6.
    static let actions: [PatternWorkload.Action] = [
        .write(blocks: 0..<1, pattern: 0x5), .trim(blocks: 0..<1), .flush, .write(blocks: 2..<3, pattern: 0x6),
    ]

    /// Runs the step on an nbdkit `sh` plugin (16 MiB) whose flush runs
    /// `flush`; returns what the step's reading makes of each command and
    /// of qemu-io's flush on closing, and the model it leaves.
    private func step(flush: String) throws -> (outcome: PatternWorkload.Outcome?, model: BlockModel, output: String) {
        let scratch = try Scratch()
        defer { scratch.remove() }
        let script = scratch.file("plugin.sh")
        try writeFile(script, Data("""
            #!/bin/sh
            case "$1" in
                get_size) echo 16M ;;
                can_write|can_flush|can_trim|can_zero) ;;
                can_fua) echo native ;;
                pread) head -c "$3" /dev/zero ;;
                pwrite) cat >/dev/null ;;
                trim|zero) ;;
                flush) \(flush) ;;
                *) exit 2 ;;
            esac

            """.utf8))
        chmod(script, 0o755)
        let socket = scratch.file("nbdkit.sock")
        let nbdkit = try ChildProcess(
            [try Tools.path(of: "nbdkit"), "--foreground", "--exit-with-parent", "--unix", socket, "sh", script],
            logPath: scratch.file("nbdkit.log"))
        defer { nbdkit.kill9() }
        let deadline = Date().addingTimeInterval(10)
        while !FileManager.default.fileExists(atPath: socket), nbdkit.isRunning, Date() < deadline { usleep(10_000) }
        try #require(FileManager.default.fileExists(atPath: socket), "nbdkit did not start: \(nbdkit.log)")

        let qemu = try launchQemuIO("nbd+unix:///?socket=\(socket)", Self.actions.map(\.command), logPath: scratch.file("qemu-io.log"))
        guard qemu.waitForExit(seconds: 30) != nil else {
            qemu.kill9()
            throw ChainError.timedOut(command: qemu.commandLine, seconds: 30, output: qemu.log)
        }
        let output = qemu.log
        let outcome = PatternWorkload.outcome(of: Self.actions, in: output)
        var model = BlockModel(blocks: 4)
        PatternWorkload.record(Self.actions, outcome, into: &model)
        return (outcome, model, output)
    }

    @Test("a flush cut off by the server's death does not count, though qemu-io prints nothing for it")
    func flushCutOff() throws {
        // The plugin kills its nbdkit (its parent) as the flush arrives.
        let (outcome, model, output) = try step(flush: "kill -9 $PPID; sleep 5")
        #expect(outcome == PatternWorkload.Outcome(commands: [true, true, false, false], flushedOnClose: false), "\(output)")
        #expect(model.allowed(0) == [0x0, 0x5], "the discard was never flushed, block 0 may hold its old data: \(output)")
    }

    @Test("a flush answered with an error does not count, though qemu-io prints nothing for it and goes on")
    func flushRefused() throws {
        let (outcome, model, output) = try step(flush: "echo 'EIO flush refused' >&2; exit 1")
        #expect(outcome == PatternWorkload.Outcome(commands: [true, true, false, true], flushedOnClose: false), "\(output)")
        #expect(model.allowed(2) == [0x0, 0x6], "the write after the refused flush was never flushed: \(output)")
        #expect(model.allowed(0) == [0x0, 0x5], "\(output)")
        #expect(model.latest(2) == 0x6, "\(output)")
    }

    @Test("a flush that succeeds counts: the discarded block must read as zeroes")
    func flushDone() throws {
        let (outcome, model, output) = try step(flush: "exit 0")
        #expect(outcome == PatternWorkload.Outcome(commands: [true, true, true, true], flushedOnClose: true), "\(output)")
        #expect(model.allowed(0) == [0x0], "\(output)")
        #expect(model.allowed(2) == [0x6], "qemu-io flushed on closing: \(output)")
    }
}
