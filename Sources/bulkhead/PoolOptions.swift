import ArgumentParser
import BlockDevice
import CryptPool
import DaemonSupport
import Keys

let program = "bulkhead"

/// Where the pool is and how to unlock it: shared by every pool command.
struct PoolOptions: ParsableArguments {
    @Argument(help: ArgumentHelp("The pool: nbd:unix:PATH[#EXPORT] or an image file.", valueName: "storage"))
    var storage: String

    @Option(name: .customLong("key-file"), help: ArgumentHelp("Read the passphrase from this file (its exact bytes).", valueName: "path"))
    var keyFile: String?

    @Option(name: .customLong("recovery-key-file"), help: ArgumentHelp("Unlock with the recovery key in this file.", valueName: "path"))
    var recoveryKeyFile: String?

    @Option(name: .customLong("state-dir"), help: ArgumentHelp("The crypt domain's state directory, to keep its trust anchor current.", valueName: "dir"))
    var stateDirectory: String?

    func location() throws -> StorageLocation {
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
