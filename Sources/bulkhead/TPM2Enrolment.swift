import ArgumentParser
import Foundation
import CryptPool
import DaemonSupport
import Keys
import Sockets
import TPM
import Toolstack

/// `bulkhead keyslot add --tpm2`: seals the pool master key in the TPM to a
/// PCR policy (current values of `--tpm2-pcrs`, or explicit future values
/// from `--tpm2-pcr-values`, or the values the launch a boot manifest
/// describes will produce, from `--tpm2-predict`), with a PIN when asked. Offline, this process
/// opens the pool with an existing keyslot and seals; with `--control`, the
/// crypt domain serving the pool seals the key it holds, in its TPM.
struct TPM2EnrolmentOptions: ParsableArguments {
    @Flag(name: .customLong("tpm2"), help: "Add a tpm2 keyslot: the TPM unseals the master key when the PCRs match.")
    var tpm2 = false

    @Option(name: .customLong("tpm2-pcrs"), help: ArgumentHelp("SHA-256 PCRs to seal to at their current values, e.g. 7,15.", valueName: "list"))
    var pcrs: String?

    @Option(name: .customLong("tpm2-pcr-values"), help: ArgumentHelp("Seal to these values instead, e.g. 15=HEX[,7=HEX] (64 hex digits each).", valueName: "list"))
    var pcrValues: String?

    @Option(name: .customLong("tpm2-predict"), help: ArgumentHelp("Seal to the PCR values `bulkhead boot` will measure from this manifest and the executables it names (before an update).", valueName: "manifest"))
    var predictManifest: String?

    @Option(name: .customLong("tpm2-predict-root"), help: ArgumentHelp("Read the executables the --tpm2-predict manifest names under this folder (a staged or unpacked initramfs), not at /.", valueName: "dir"))
    var predictRoot: String?

    @Flag(name: .customLong("tpm2-pin"), help: "Also require a PIN (asked twice, or read from --tpm2-pin-file).")
    var pin = false

    @Option(name: .customLong("tpm2-pin-file"), help: ArgumentHelp("The PIN, from this file (its exact bytes).", valueName: "path"))
    var pinFile: String?

    @Option(name: .customLong("tpm2-device"), help: ArgumentHelp("The TPM's TCTI when offline (default device:/dev/tpmrm0).", valueName: "tcti"))
    var device = TPMContext.defaultTCTI

    /// Enrols as the options say; returns the line to print.
    func enrol(options: PoolOptions) throws -> String {
        let selection = try parsePCRList(pcrs ?? "")
        var predicted = try parsePCRValues(pcrValues ?? "")
        if let predictManifest {
            let launch: [Int: [UInt8]]
            do { launch = try Measurement.predictedPCRs(forManifestAt: predictManifest, under: predictRoot) } catch {
                throw commandFailure(program, "cannot predict the launch of \(predictManifest): \(error)")
            }
            for (index, value) in launch {
                guard predicted[index] == nil else {
                    throw commandFailure(program, "PCR \(index) is given by both --tpm2-pcr-values and --tpm2-predict", status: usageExitCode)
                }
                predicted[index] = value
            }
        }
        guard predictRoot == nil || predictManifest != nil else {
            throw commandFailure(program, "--tpm2-predict-root goes with --tpm2-predict", status: usageExitCode)
        }
        guard !selection.isEmpty || !predicted.isEmpty else {
            throw commandFailure(program, "--tpm2 needs --tpm2-pcrs, --tpm2-pcr-values or --tpm2-predict", status: usageExitCode)
        }
        let pin = try readPIN()
        if let address = try options.controlAddress() {
            guard device == TPMContext.defaultTCTI else {
                throw commandFailure(program, "with --control the crypt domain uses its own TPM (its --tpm2-device)", status: usageExitCode)
            }
            let request = ControlRequest(
                operation: .keyslotAddTPM2, pcrs: selection,
                pcrValues: predicted.isEmpty ? nil : Dictionary(uniqueKeysWithValues: predicted.map { (String($0.key), Hex.encode($0.value)) }),
                pin: pin.map { secret in secret.withUnsafeBytes { Hex.encode($0) } })
            return try options.ask(request, at: address).message ?? "Added a tpm2 keyslot."
        }
        let pool = try options.openPool()
        return try enrolTPM2(pool: pool, pcrs: selection, predicted: predicted, pin: pin, device: device)
    }

    private func readPIN() throws -> SecretBytes? {
        guard pin || pinFile != nil else { return nil }
        do {
            var bytes: [UInt8]
            if let pinFile {
                bytes = try SecretInput.keyFile(pinFile)
            } else {
                bytes = try SecretInput.prompt("TPM PIN: ")
                guard try SecretInput.prompt("Repeat the PIN: ") == bytes else { throw commandFailure(program, "the PINs differ") }
                guard !bytes.isEmpty else { throw commandFailure(program, "the PIN is empty") }
            }
            return .taking(&bytes)
        } catch let error as SecretInputError {
            throw commandFailure(program, error.description)
        }
    }
}

/// Seals `pool`'s master key into a new tpm2 keyslot, to the current values
/// of `pcrs` overridden by `predicted` (SHA-256 PCR index to value). This is
/// the path `bulkhead boot --tpm2-predict MANIFEST` enrols through, with
/// the values it predicts for the next launch.
func enrolTPM2(pool: Pool, pcrs: [Int], predicted: [Int: [UInt8]], pin: SecretBytes?, device: String) throws -> String {
    do {
        let context = try TPMContext(tcti: device)
        let values = try context.sealingValues(pcrs: pcrs, predicted: predicted)
        let slot = try pool.addTPM2Keyslot(sealObject: context.keyslotSealer(pcrValues: values, pin: pin))
        return "Added tpm2 keyslot \(slot) sealed to PCRs \(try PCRSelection(values.keys))\(pin == nil ? "" : " and a PIN")."
    } catch {
        throw commandFailure(program, "cannot add a tpm2 keyslot: \(error)")
    }
}

/// "7,15" → [7, 15]; each 0...23, no duplicates.
func parsePCRList(_ text: String) throws -> [Int] {
    guard !text.isEmpty else { return [] }
    let indices = text.split(separator: ",", omittingEmptySubsequences: false).map { Int($0.trimmingCharacters(in: .whitespaces)) }
    guard indices.allSatisfy({ $0 != nil && (0..<PCRSelection.count).contains($0!) }), Set(indices).count == indices.count else {
        throw commandFailure(program, "bad PCR list \"\(text)\": expected distinct numbers 0...23 separated by commas", status: usageExitCode)
    }
    return indices.map { $0! }
}

/// "15=HEX,7=HEX" → [15: bytes, 7: bytes]; 32-byte SHA-256 values.
func parsePCRValues(_ text: String) throws -> [Int: [UInt8]] {
    guard !text.isEmpty else { return [:] }
    var values: [Int: [UInt8]] = [:]
    for item in text.split(separator: ",") {
        let parts = item.split(separator: "=", maxSplits: 1).map(String.init)
        guard parts.count == 2, let index = Int(parts[0]), (0..<PCRSelection.count).contains(index), values[index] == nil,
            let bytes = Hex.decode(parts[1]), bytes.count == 32
        else {
            throw commandFailure(program, "bad PCR value \"\(item.prefix(80))\": expected PCR=64 hex digits (SHA-256), each PCR once", status: usageExitCode)
        }
        values[index] = bytes
    }
    return values
}
