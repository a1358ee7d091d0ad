import Crypto

/// TPM 2.0 policy digests computed without a TPM, for sealing to PCR values
/// a future launch will produce (TPM 2.0 Part 3, 23.7 TPM2_PolicyPCR and
/// 23.18 TPM2_PolicyAuthValue, SHA-256 policy sessions).
public enum PolicyDigest {
    /// TPM_CC_PolicyPCR.
    static let commandPolicyPCR: UInt32 = 0x0000_017F
    /// TPM_CC_PolicyAuthValue.
    static let commandPolicyAuthValue: UInt32 = 0x0000_016B
    /// TPM_ALG_SHA256.
    static let sha256: UInt16 = 0x000B

    /// The digest a fresh policy session starts from: 32 zero bytes.
    public static let initial = [UInt8](repeating: 0, count: 32)

    /// pcrDigest of TPM2_PolicyPCR: SHA-256 over the selected PCR values
    /// concatenated in ascending PCR order.
    public static func pcrDigest(_ values: [Int: [UInt8]]) -> [UInt8] {
        var hash = SHA256()
        for index in values.keys.sorted() { hash.update(data: values[index]!) }
        return Array(hash.finalize())
    }

    /// The marshalled TPML_PCR_SELECTION of one SHA-256 bank: count,
    /// then hash, sizeofSelect and the bitmap.
    static func marshal(_ selection: PCRSelection) -> [UInt8] {
        var bytes: [UInt8] = []
        bytes.appendBigEndian(UInt32(1))
        bytes.appendBigEndian(sha256)
        bytes.append(3)
        bytes += selection.bitmap
        return bytes
    }

    /// TPM2_PolicyPCR: policyDigest' = H(policyDigest ‖ TPM_CC_PolicyPCR ‖
    /// pcrSelection ‖ H(PCR values)).
    public static func policyPCR(_ digest: [UInt8], values: [Int: [UInt8]]) throws(TPMError) -> [UInt8] {
        for (index, value) in values where value.count != 32 {
            throw .invalidArgument("PCR \(index) value of \(value.count) bytes (SHA-256 needs 32)")
        }
        let selection = try PCRSelection(values.keys)
        var bytes = digest
        bytes.appendBigEndian(commandPolicyPCR)
        bytes += marshal(selection)
        bytes += pcrDigest(values)
        return Array(SHA256.hash(data: bytes))
    }

    /// TPM2_PolicyAuthValue: policyDigest' = H(policyDigest ‖ TPM_CC_PolicyAuthValue).
    public static func policyAuthValue(_ digest: [UInt8]) -> [UInt8] {
        var bytes = digest
        bytes.appendBigEndian(commandPolicyAuthValue)
        return Array(SHA256.hash(data: bytes))
    }

    /// The policy this layer seals to: PolicyPCR over `values` (skipped when
    /// empty), then PolicyAuthValue when a PIN is required.
    public static func sealingPolicy(values: [Int: [UInt8]], requiresPIN: Bool) throws(TPMError) -> [UInt8] {
        var digest = initial
        if !values.isEmpty { digest = try policyPCR(digest, values: values) }
        if requiresPIN { digest = policyAuthValue(digest) }
        return digest
    }

    /// The value a SHA-256 PCR holds after extending `value` with `digest`:
    /// SHA-256(value ‖ digest). What PCR prediction chains per measurement.
    public static func extend(_ value: [UInt8], with digest: [UInt8]) -> [UInt8] {
        Array(SHA256.hash(data: value + digest))
    }
}
