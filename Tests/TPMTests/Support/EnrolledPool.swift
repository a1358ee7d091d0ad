import BlockDevice
@testable import CryptPool
import Foundation
import Keys
import TestSupport

/// A pool image with a passphrase, a recovery key and a 4 MiB volume `vm1`,
/// made by the real `bulkhead`, for the TPM product tests: they enrol it in
/// a real swtpm and serve it with the real `bulkhead-cryptd`.
final class EnrolledPool {
    let directory: TemporaryDirectory
    let tcti: String
    var image: String { directory.file("pool.img") }
    var passphraseFile: String { directory.file("passphrase") }
    var recoveryFile: String { directory.file("recovery-key") }
    var stateDirectory: String { directory.file("state") }
    var serveDirectory: String { directory.file("volumes") }
    var controlSocket: String { directory.file("control.sock") }
    static let passphrase = "correct horse battery staple"

    init(tcti: String) throws {
        directory = try TemporaryDirectory()
        self.tcti = tcti
        _ = FileManager.default.createFile(atPath: passphraseFile, contents: Data(Self.passphrase.utf8), attributes: [.posixPermissions: 0o600])
        guard FileManager.default.createFile(atPath: image, contents: nil), truncate(image, 64 << 20) == 0 else {
            throw TestFailure("cannot create \(image)")
        }
        try bulkheadChecked(["format", image, "--key-file", passphraseFile, "--scrypt-log2n", "10", "--recovery-key-out", recoveryFile])
        try bulkheadChecked(["volume", "create", image, "vm1", "--size", "4M", "--key-file", passphraseFile])
    }

    func bulkhead(_ arguments: [String], environment: [String: String] = [:]) throws -> Finished {
        try run([try built("bulkhead")] + arguments, in: directory, environment: environment)
    }

    @discardableResult
    func bulkheadChecked(_ arguments: [String]) throws -> Finished {
        let result = try bulkhead(arguments)
        guard result.status == 0 else { throw TestFailure(result.description) }
        return result
    }

    /// `bulkhead keyslot add IMAGE --tpm2 ...` offline, with the passphrase.
    @discardableResult
    func enrol(_ options: [String]) throws -> Finished {
        try bulkheadChecked(["keyslot", "add", image, "--key-file", passphraseFile, "--tpm2", "--tpm2-device", tcti] + options)
    }

    func cryptdArguments(_ extra: [String]) throws -> [String] {
        [try built("bulkhead-cryptd"), "--storage", image, "--state-dir", stateDirectory, "--serve-dir", serveDirectory] + extra
    }

    /// Starts the crypt domain and waits until it serves `vm1`.
    func startCryptd(_ extra: [String]) throws -> Child {
        let child = try Child(try cryptdArguments(extra), logPath: directory.file("cryptd-\(UUID().uuidString).log"))
        let socket = serveDirectory + "/vm1.sock"
        let up = eventually(timeout: 60) { child.status != nil || FileManager.default.fileExists(atPath: socket) }
        guard up, child.status == nil else {
            child.terminate(grace: 1)
            throw TestFailure("bulkhead-cryptd did not start serving:\n\(child.log.suffix(3000))")
        }
        return child
    }

    /// Runs the crypt domain expecting it to refuse: its exit and output.
    func cryptdRefusal(_ extra: [String]) throws -> Finished {
        let result = try run(try cryptdArguments(extra), in: directory, timeout: 60)
        guard result.status != 0 else { throw TestFailure("bulkhead-cryptd was expected to refuse:\n\(result.output.suffix(3000))") }
        return result
    }

    /// The NBD URI of a served volume.
    func uri(_ volume: String = "vm1") -> String { "nbd+unix:///\(volume)?socket=\(serveDirectory)/\(volume).sock" }

    /// Writes `pattern` over the first 64 KiB of the volume with qemu-io and reads it back.
    func writeAndCheck(pattern: UInt8, volume: String = "vm1") throws {
        let qemuIO = try tool("qemu-io", package: "qemu-utils")
        let result = try run(
            [qemuIO, "-f", "raw", uri(volume), "-c", "write -P \(pattern) 0 64k", "-c", "read -P \(pattern) 0 64k"], in: directory)
        guard result.status == 0, !result.output.contains("fail"), !result.output.contains("error") else {
            throw TestFailure(result.description)
        }
    }

    /// Reads the first 64 KiB with qemu-io, checking they hold `pattern`.
    func check(pattern: UInt8, volume: String = "vm1") throws {
        let qemuIO = try tool("qemu-io", package: "qemu-utils")
        let result = try run([qemuIO, "-f", "raw", "-r", uri(volume), "-c", "read -P \(pattern) 0 64k"], in: directory)
        guard result.status == 0, !result.output.contains("fail"), !result.output.contains("error") else {
            throw TestFailure(result.description)
        }
    }

    /// The pool master key, learned by opening the image offline with the
    /// passphrase through the engine (no crypt domain may be running).
    func masterKey() throws -> [UInt8] {
        let device = try FileBlockDevice(path: image)
        let pool = try Pool.open(storage: device, secret: .passphrase(Array(Self.passphrase.utf8)), anchor: nil)
        return pool.master.secret.withUnsafeBytes { Array($0) }
    }
}
