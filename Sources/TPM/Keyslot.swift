import Keys
import PoolFormat

/// Unseals the master key of `tpm2` keyslots with this TPM (issue 5): parses
/// the sealed object from the keyslot's type-specific data and unseals it
/// in salted, encrypted sessions, with the PIN when the slot needs one.
public struct TPMKeyslotUnsealer: KeyslotUnsealer {
    public let context: TPMContext
    public let pin: SecretBytes?

    public init(context: TPMContext, pin: SecretBytes? = nil) {
        self.context = context
        self.pin = pin
    }

    public func unseal(_ block: KeyslotBlock) throws -> SecretBytes {
        let sealed = try TPMSealedSecret(serialized: block.extra)
        if sealed.requiresPIN && pin == nil { throw TPMError.pinRequired }
        return try context.unseal(sealed, pin: pin)
    }
}

/// What `bulkhead dump` shows of a `tpm2` keyslot: its PCRs and PIN flag.
public struct TPMKeyslotInfo: Sendable, Equatable, CustomStringConvertible {
    public let pcrs: [Int]
    public let requiresPIN: Bool

    /// Parses the keyslot's type-specific data; nil if it is not a sealed object.
    public init?(extra: [UInt8]) {
        guard let sealed = try? TPMSealedSecret(serialized: extra) else { return nil }
        pcrs = sealed.pcrs.indices
        requiresPIN = sealed.requiresPIN
    }

    public var description: String {
        "pcrs sha256:" + (pcrs.isEmpty ? "none" : pcrs.map(String.init).joined(separator: ",")) + (requiresPIN ? " +pin" : "")
    }
}

extension TPMContext {
    /// The sealing step of a `tpm2` keyslot (`KeyslotSealer.sealTPM2`): seals
    /// the master key to `pcrValues` (current or predicted SHA-256 values)
    /// and the PIN if given, and returns the serialized sealed object.
    public func keyslotSealer(pcrValues: [Int: [UInt8]], pin: SecretBytes?) -> (SecretBytes) throws -> [UInt8] {
        { master in try self.seal(master, to: pcrValues, pin: pin).serialized() }
    }

    /// The values a `tpm2` keyslot seals to: the current values of `pcrs`,
    /// replaced by `predicted` where given (`--tpm2-pcr-values`, and the
    /// values `bulkhead boot --tpm2-predict` computes).
    public func sealingValues(pcrs: [Int], predicted: [Int: [UInt8]] = [:]) throws(TPMError) -> [Int: [UInt8]] {
        for (index, value) in predicted where value.count != 32 {
            throw .invalidArgument("predicted PCR \(index) value of \(value.count) bytes (SHA-256 needs 32)")
        }
        let current = try pcrs.isEmpty ? [:] : readPCRs(PCRSelection(pcrs))
        return current.merging(predicted) { _, new in new }
    }
}
