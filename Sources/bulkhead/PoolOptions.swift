import ArgumentParser
import BlockDevice
import CryptPool
import DaemonSupport
import Keys
import Sockets
#if canImport(Glibc)
import Glibc
#endif

let program = "bulkhead"

/// Where the pool is and how to unlock it: shared by every pool command.
/// With `--control`, the command is done by the crypt domain serving the
/// pool, and this process neither opens the pool nor holds its key.
struct PoolOptions: ParsableArguments {
    @Argument(help: ArgumentHelp("The pool: nbd:unix:PATH[#EXPORT] or an image file (not with --control).", valueName: "storage"))
    var storage: String?

    @Option(name: .customLong("control"), help: ArgumentHelp("Ask the crypt domain serving the pool, on its control socket (unix:PATH or PATH).", valueName: "socket"))
    var control: String?

    @Option(name: .customLong("key-file"), help: ArgumentHelp("Read the passphrase from this file (its exact bytes).", valueName: "path"))
    var keyFile: String?

    @Option(name: .customLong("recovery-key-file"), help: ArgumentHelp("Unlock with the recovery key in this file.", valueName: "path"))
    var recoveryKeyFile: String?

    @Option(name: .customLong("state-dir"), help: ArgumentHelp("The crypt domain's state directory, to keep its trust anchor current.", valueName: "dir"))
    var stateDirectory: String?

    /// The command's own operand (a volume name, a keyslot number). With
    /// `--control` there is no STORAGE, so the parser hands the operand over
    /// as STORAGE: it is taken back here.
    func withOperand(_ operand: String?) throws -> (PoolOptions, String) {
        if let operand { return (self, operand) }
        guard control != nil, let storage else { throw commandFailure(program, "missing operand (see --help)", status: usageExitCode) }
        var options = self
        options.storage = nil
        return (options, storage)
    }

    /// The control socket's address, or nil for offline use.
    func controlAddress() throws -> SocketAddress? {
        guard let control else {
            guard storage != nil else { throw commandFailure(program, "name the pool's STORAGE, or a crypt domain's --control socket", status: usageExitCode) }
            return nil
        }
        guard storage == nil, keyFile == nil, recoveryKeyFile == nil, stateDirectory == nil else {
            throw commandFailure(
                program, "--control asks the crypt domain, which holds the key: leave out STORAGE, --key-file, --recovery-key-file and --state-dir",
                status: usageExitCode)
        }
        do { return try SocketAddress(parsing: control.hasPrefix("unix:") ? control : "unix:" + control) } catch {
            throw commandFailure(program, "bad --control: \(error)", status: usageExitCode)
        }
    }

    /// Sends `request` to the crypt domain; a refusal is a one-line failure.
    func ask(_ request: ControlRequest, at address: SocketAddress) throws -> ControlResponse {
        let response: ControlResponse
        do { response = try ControlProtocol.exchange(request, with: address) } catch {
            throw commandFailure(program, "crypt domain at \(address): \(error)")
        }
        pauseForTestsAfterControl()
        return response
    }

    func location() throws -> StorageLocation {
        guard let storage else { throw commandFailure(program, "this command needs the pool's STORAGE", status: usageExitCode) }
        do { return try StorageLocation(parsing: storage) } catch {
            throw commandFailure(program, "bad storage \"\(storage)\": \(error)", status: usageExitCode)
        }
    }

    func device() throws -> any BlockDevice {
        let location = try location()
        do { return try location.open() } catch { throw commandFailure(program, "cannot open \(location): \(error)") }
    }

    func anchor() throws -> (any TrustAnchor)? {
        guard let stateDirectory else { return nil }
        do { return try FileTrustAnchor(directory: stateDirectory) } catch { throw commandFailure(program, "\(error)") }
    }

    func openPool() throws -> Pool {
        let device = try device()
        let secret: KeyslotSecret
        do { secret = try SecretInput.poolSecret(keyFile: keyFile, recoveryKeyFile: recoveryKeyFile) } catch {
            throw commandFailure(program, error.description)
        }
        do { return try Pool.open(storage: device, secret: secret, anchor: try anchor()) } catch let error as PoolError {
            throw commandFailure(program, "cannot open the pool: \(error)")
        }
    }
}

/// Parses sizes such as 4096, 512K, 64M, 10G, 2T (powers of 1024).
func parseSize(_ text: String) throws -> UInt64 {
    let units: [Character: UInt64] = ["K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40]
    var digits = text.uppercased()
    var multiplier: UInt64 = 1
    if digits.hasSuffix("IB") { digits.removeLast(2) } else if digits.hasSuffix("B") { digits.removeLast() }
    if let last = digits.last, let unit = units[last] {
        multiplier = unit
        digits.removeLast()
    }
    guard let value = UInt64(digits), value > 0 else {
        throw commandFailure(program, "bad size \"\(text)\": expected a number with an optional K, M, G or T", status: usageExitCode)
    }
    let (size, overflow) = value.multipliedReportingOverflow(by: multiplier)
    guard !overflow else { throw commandFailure(program, "size \"\(text)\" is too large", status: usageExitCode) }
    return size
}

func formatSize(_ bytes: UInt64) -> String {
    for (unit, scale) in [("TiB", UInt64(1) << 40), ("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)] where bytes >= scale {
        let value = Double(bytes) / Double(scale)
        return value == value.rounded() ? "\(Int(value)) \(unit)" : String(format: "%.1f %@", value, unit)
    }
    return "\(bytes) B"
}

/// Test hook: with BULKHEAD_TEST_STOP_AFTER_CONTROL=1 in the environment,
/// the process stops itself (SIGSTOP) once its control exchange is done, so
/// a test can scan its memory for key material before letting it go on.
func pauseForTestsAfterControl() {
    guard getenv("BULKHEAD_TEST_STOP_AFTER_CONTROL").map({ String(cString: $0) }) == "1" else { return }
    raise(SIGSTOP)
}
