import CTSS2

/// Everything that can go wrong talking to a TPM 2.0 through tpm2-tss.
public enum TPMError: Error, Sendable, Equatable, CustomStringConvertible {
    /// The TCTI loader could not open the transport named by the TCTI string.
    case transportUnavailable(tcti: String, code: UInt32)
    /// An ESYS call returned a response code other than success.
    case command(String, code: UInt32)
    /// TPM2_PolicyPCR refused: the PCRs listed (ascending) no longer hold the
    /// values the secret was sealed to.
    case pcrMismatch(pcrs: [Int])
    /// The object's authorization (the PIN, through TPM2_PolicyAuthValue) was wrong.
    case authorizationFailed(String)
    /// The secret's policy includes a PIN and none was given.
    case pinRequired
    /// The TPM is in dictionary-attack lockout and refuses authorizations
    /// until its recovery time has passed.
    case lockedOut(String)
    /// The primary storage key the TPM derived is not the one the blob was
    /// sealed under: another TPM, a cleared owner hierarchy, or a transport
    /// that impersonates the TPM.
    case primaryKeyMismatch(expected: [UInt8], found: [UInt8])
    /// A sealed blob that cannot be parsed.
    case malformedBlob(String)
    /// An argument outside what the TPM layer accepts.
    case invalidArgument(String)
    /// The NV index is not defined on this TPM.
    case nvIndexUndefined(UInt32)
    /// The NV index exists but is not a counter this layer would have defined.
    case nvIndexNotACounter(UInt32, String)

    /// The text tpm2-tss gives for a response code ("tpm:error(2.0): ...").
    public static func decode(_ code: UInt32) -> String {
        guard let text = Tss2_RC_Decode(code) else { return "unknown response code" }
        return String(cString: text)
    }

    public var description: String {
        switch self {
        case .transportUnavailable(let tcti, let code):
            return "cannot open the TPM transport \"\(tcti)\": \(Self.decode(code)) (0x\(hex(code)))"
        case .command(let operation, let code):
            return "\(operation) failed: \(Self.decode(code)) (0x\(hex(code)))"
        case .pcrMismatch(let pcrs):
            let list = pcrs.map(String.init).joined(separator: ", ")
            return "PCR \(list) (sha256) differ from the values the key was sealed to; unlock with the recovery key (--recovery-key-file) and enrol the TPM again"
        case .authorizationFailed(let operation):
            return "\(operation): wrong PIN (the TPM counts failures towards its dictionary-attack lockout)"
        case .pinRequired:
            return "this TPM keyslot needs its PIN"
        case .lockedOut(let operation):
            return "\(operation): the TPM is in dictionary-attack lockout; wait for its recovery time or use the recovery key"
        case .primaryKeyMismatch(let expected, let found):
            return "the TPM's primary storage key (name \(hex(found))) is not the one the secret was sealed under (name \(hex(expected)))"
        case .malformedBlob(let reason):
            return "malformed sealed TPM blob: \(reason)"
        case .invalidArgument(let reason):
            return "invalid TPM request: \(reason)"
        case .nvIndexUndefined(let index):
            return "TPM NV index 0x\(hex(index)) is not defined"
        case .nvIndexNotACounter(let index, let reason):
            return "TPM NV index 0x\(hex(index)) is not a counter owned by this pool: \(reason)"
        }
    }
}

/// Response codes this layer reacts to (TPM 2.0 Part 2, 6.6 TPM_RC). The
/// header spells them as nested macros Swift cannot import.
enum ResponseCode {
    static let format1: UInt32 = 0x080
    static let value: UInt32 = format1 + 0x004
    static let handle: UInt32 = format1 + 0x00B
    static let authFail: UInt32 = format1 + 0x00E
    static let policyFail: UInt32 = format1 + 0x01D
    static let badAuth: UInt32 = format1 + 0x022
    static let lockout: UInt32 = 0x921
    static let nvUninitialized: UInt32 = 0x14A

    /// The TPM error of `code` without its layer, and without the
    /// parameter/handle/session number of a format-one code.
    static func base(_ code: UInt32) -> UInt32 {
        let tpm = code & 0xFFFF
        // Only codes from the TPM itself (layer 0) or ESYS-wrapped TPM codes
        // carry TPM meaning in their low bits; other layers are TSS errors.
        guard code & 0xFFFF_0000 == 0 else { return code }
        return tpm & format1 != 0 ? tpm & 0x0BF : tpm
    }
}

func hex(_ value: UInt32) -> String {
    let digits = String(value, radix: 16)
    return String(repeating: "0", count: max(0, 8 - digits.count)) + digits
}

func hex(_ bytes: [UInt8]) -> String {
    bytes.map { byte in
        let digits = String(byte, radix: 16)
        return digits.count == 1 ? "0" + digits : digits
    }.joined()
}
