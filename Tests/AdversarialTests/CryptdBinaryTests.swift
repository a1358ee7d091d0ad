import BlockDevice
import Foundation
import NBDClient
import NBDProtocol
import TestSupport
import Testing
import Threads

@testable import CryptPool

/// The real `bulkhead-cryptd` process between a consumer and the hostile
/// storage domain: corrupted and failing storage must reach the consumer
/// as NBD errors, never as wrong data, and the daemon must keep serving and
/// shut down cleanly.
@Suite(.serialized) struct CryptdBinaryTests {
    static let binary = packageRoot + "/.build/debug/bulkhead-cryptd"

    @Test func cryptdOverHostileStorage() {
        scenario(
            "bulkhead-cryptd over flipped bits and EIO",
            expected: "NBD errors to the consumer; cryptd keeps serving, exits 0 on SIGTERM; the pool reopens clean"
        ) { run in
            guard FileManager.default.isExecutableFile(atPath: Self.binary) else {
                // Built by `swift build` (scripts/test and scripts/reliability run it first).
                run.require(false, "\(Self.binary) is missing: run `swift build` first")
                return
            }
            let storage = try HostileStorage()
            let directory = try TemporaryDirectory("cryptd")
            let keyFile = directory.file("key")
            _ = FileManager.default.createFile(atPath: keyFile, contents: Data(testPassphrase))
            var expected: [UInt64: [UInt8]] = [:]
            do {
                let remote = try storage.connect()
                let pool = try Pool.format(storage: remote, passphrase: testPassphrase, cost: testCost, anchor: nil).pool
                try pool.createVolume(name: "vm", size: 1 << 20)
                let volume = try pool.volume(named: "vm")
                for block in UInt64(0)..<16 {
                    expected[block] = blockContents(seed: 500 + block)
                    try volume.writeBytes(at: block * 4096, expected[block]!)
                }
                try pool.close()
                remote.close()
            }

            let daemon = Process()
            daemon.executableURL = URL(fileURLWithPath: Self.binary)
            daemon.arguments = [
                "--storage", "nbd:\(storage.address)#pool", "--key-file", keyFile, "--state-dir", directory.file("state"),
                "--serve-dir", directory.file("serve"), "--retry-window", "2", "--log-level", "critical",
            ]
            daemon.standardError = FileHandle(forWritingAtPath: "/dev/null")
            try daemon.run()
            defer {
                if daemon.isRunning { kill(daemon.processIdentifier, SIGKILL) }
                daemon.waitUntilExit()
            }
            let socket = directory.file("serve/vm.sock")
            let deadline = monotonicSeconds() + 20
            while !FileManager.default.fileExists(atPath: socket), daemon.isRunning, monotonicSeconds() < deadline { usleep(50_000) }
            run.require(FileManager.default.fileExists(atPath: socket), "cryptd should serve vm.sock within 20 s")
            let consumer = try NBDConnection.connect(
                to: .unix(path: socket), export: "vm", options: NBDConnection.Options(requestTimeout: 20, logger: quietLogger("consumer")))

            var tally = ReadTally()
            func readAll() -> ReadTally {
                var pass = ReadTally()
                for block in UInt64(0)..<20 {
                    do {
                        let bytes = try consumer.read(at: block * 4096, length: 4096)
                        pass.add(bytes == (expected[block] ?? [UInt8](repeating: 0, count: 4096)) ? .correct : .wrong)
                    } catch {
                        pass.add(.failed(.io(operation: "\(error)", errno: EIO)))
                    }
                }
                tally.correct += pass.correct
                tally.failed += pass.failed
                tally.wrong += pass.wrong
                return pass
            }
            let honest = readAll()
            run.require(honest.correct == 20, "honest storage: every read correct, got \(honest)")
            storage.device.misbehaviour = .flipBits(probability: 1)
            let flipped = readAll()
            run.require(flipped.failed == 16, "flipped bits: the 16 written blocks must fail, got \(flipped)")
            storage.device.misbehaviour = .failRequests(probability: 1)
            let failing = readAll()
            run.require(failing.failed == 16, "EIO: the 16 written blocks must fail, got \(failing)")
            let write = Result { () throws(NBDClientError) in try consumer.write(at: 0, bytes: blockContents(seed: 9), fua: true) }
            run.require(!write.isSuccess, "a FUA write over failing storage must fail")
            storage.device.misbehaviour = .honest
            let recovered = readAll()
            run.require(recovered.correct == 20, "honest again: every read correct, got \(recovered)")
            run.require(daemon.isRunning, "cryptd must still be running")
            consumer.close()

            daemon.terminate()
            let stopBy = monotonicSeconds() + 15
            while daemon.isRunning, monotonicSeconds() < stopBy { usleep(50_000) }
            run.require(!daemon.isRunning, "cryptd must exit within 15 s of SIGTERM")
            if !daemon.isRunning {
                run.require(daemon.terminationStatus == 0, "cryptd must exit 0, got \(daemon.terminationStatus)")
            }
            let reopened = try Pool.open(storage: try storage.connect(), secret: .passphrase(testPassphrase), anchor: nil)
            run.require(reopened.verify().failures.isEmpty, "the pool must scrub clean after cryptd")
            run.observe("cryptd exit status \(daemon.isRunning ? "still running" : String(daemon.terminationStatus))")
            run.tally = tally
        }
    }
}
