import CTSS2
import Crypto
import Keys
#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif

/// A sealed object loaded under the primary key (TPM2_Load), flushed on deinit.
final class TPMLoadedObject {
    let context: TPMContext
    let handle: ESYS_TR

    init(context: TPMContext, parent: TPMPrimaryKey, session: TPMSession, sealed: TPMSealedSecret) throws(TPMError) {
        self.context = context
        var inPublic = try sealed.unmarshalPublic()
        var inPrivate = try sealed.unmarshalPrivate()
        var handle = ESYS_TR(ESYS_TR_NONE)
        try context.call("Esys_Load") { esys in
            Esys_Load(
                esys, parent.handle, session.handle, ESYS_TR(ESYS_TR_NONE), ESYS_TR(ESYS_TR_NONE),
                &inPrivate, &inPublic, &handle)
        }
        self.handle = handle
    }

    deinit { context.flush(handle) }
}

extension TPMContext {
    /// The most bytes a TPM seals in one object (MAX_SYM_DATA of the PC
    /// Client profile).
    public static let maxSealedLength = 128

    /// Seals `secret` to the SHA-256 PCRs `selection` as they are now.
    public func seal(_ secret: SecretBytes, toCurrent selection: PCRSelection, pin: SecretBytes? = nil) throws(TPMError) -> TPMSealedSecret {
        try seal(secret, to: readPCRs(selection), pin: pin)
    }

    /// Seals `secret` under the primary storage key so that the TPM releases
    /// it only in a policy session where the SHA-256 PCRs hold `pcrValues`
    /// (which may be predicted values of a future launch) and, with a `pin`,
    /// the PIN is proven (TPM2_PolicyAuthValue). The secret and the PIN
    /// cross the transport encrypted in a session salted with the primary key.
    public func seal(_ secret: SecretBytes, to pcrValues: [Int: [UInt8]], pin: SecretBytes? = nil) throws(TPMError) -> TPMSealedSecret {
        guard (1...Self.maxSealedLength).contains(secret.count) else {
            throw .invalidArgument("sealed secret of \(secret.count) bytes (1...\(Self.maxSealedLength))")
        }
        guard !pcrValues.isEmpty || pin != nil else {
            throw .invalidArgument("a sealed secret needs at least one PCR or a PIN")
        }
        let policy = try trialPolicy(values: pcrValues, requiresPIN: pin != nil)
        guard try policy == PolicyDigest.sealingPolicy(values: pcrValues, requiresPIN: pin != nil) else {
            throw .invalidArgument("the TPM computed another policy digest than PolicyDigest for \(try PCRSelection(pcrValues.keys))")
        }

        let primary = try TPMPrimaryKey(context: self)
        let session = try TPMSession(context: self, kind: .hmac, saltedWith: primary)
        // TPM2_Create's first parameter is inSensitive (the secret and the PIN).
        try session.setAttributes(encryptCommand: true, encryptResponse: false)

        var sensitive = TPM2B_SENSITIVE_CREATE()
        // SAFETY: the C structure holds the secret and the PIN's authValue
        // on this stack frame only; both are zeroed before returning.
        defer { withUnsafeMutableBytes(of: &sensitive) { explicit_bzero($0.baseAddress!, $0.count) } }
        secret.withUnsafeBytes { raw in _ = store(raw, into: &sensitive.sensitive.data.buffer) }
        sensitive.sensitive.data.size = UInt16(secret.count)
        if let pin {
            var auth = Self.authValue(pin)
            defer { explicit_bzero(&auth, auth.count) }
            _ = store(auth, into: &sensitive.sensitive.userAuth.buffer)
            sensitive.sensitive.userAuth.size = UInt16(auth.count)
        }

        var template = try Self.sealedObjectTemplate(policy: policy, requiresPIN: pin != nil)
        var outsideInfo = TPM2B_DATA()
        var creationPCR = TPML_PCR_SELECTION()
        var outPrivate: UnsafeMutablePointer<TPM2B_PRIVATE>?
        var outPublic: UnsafeMutablePointer<TPM2B_PUBLIC>?
        var creationData: UnsafeMutablePointer<TPM2B_CREATION_DATA>?
        var creationHash: UnsafeMutablePointer<TPM2B_DIGEST>?
        var creationTicket: UnsafeMutablePointer<TPMT_TK_CREATION>?
        try call("Esys_Create") { esys in
            Esys_Create(
                esys, primary.handle, session.handle, ESYS_TR(ESYS_TR_NONE), ESYS_TR(ESYS_TR_NONE),
                &sensitive, &template, &outsideInfo, &creationPCR,
                &outPrivate, &outPublic, &creationData, &creationHash, &creationTicket)
        }
        defer {
            Esys_Free(outPrivate)
            Esys_Free(outPublic)
            Esys_Free(creationData)
            Esys_Free(creationHash)
            Esys_Free(creationTicket)
        }
        return TPMSealedSecret(
            pcrValues: pcrValues, requiresPIN: pin != nil, primaryName: primary.name, policy: policy,
            publicArea: try TPMSealedSecret.marshal(outPublic!.pointee),
            privateArea: try TPMSealedSecret.marshal(outPrivate!.pointee))
    }

    /// Unseals `sealed`: recreates the primary key and checks it is the one
    /// sealed under, loads the object, satisfies its policy in a salted
    /// policy session (TPM2_PolicyPCR with the sealed-to values, then
    /// TPM2_PolicyAuthValue with the PIN), and runs TPM2_Unseal with its
    /// response encrypted by a salted HMAC session. A PCR that moved is
    /// reported as `.pcrMismatch` naming every PCR that differs.
    public func unseal(_ sealed: TPMSealedSecret, pin: SecretBytes? = nil) throws(TPMError) -> SecretBytes {
        if sealed.requiresPIN && pin == nil { throw .pinRequired }
        let primary = try TPMPrimaryKey(context: self)
        guard primary.name == sealed.primaryName else {
            throw .primaryKeyMismatch(expected: sealed.primaryName, found: primary.name)
        }
        let session = try TPMSession(context: self, kind: .hmac, saltedWith: primary)
        // TPM2_Load's first parameter is the (already encrypted) private area.
        try session.setAttributes(encryptCommand: true, encryptResponse: false)
        let object = try TPMLoadedObject(context: self, parent: primary, session: session, sealed: sealed)

        let policy = try TPMSession(context: self, kind: .policy, saltedWith: primary)
        if !sealed.pcrValues.isEmpty {
            do { try policy.policyPCR(sealed.pcrValues) } catch {
                throw try pcrFailure(error, expected: sealed.pcrValues)
            }
        }
        if let pin, sealed.requiresPIN {
            try policy.policyAuthValue()
            var auth = try TPM2B_AUTH(bytes: Self.authValue(pin))
            defer { withUnsafeMutableBytes(of: &auth) { explicit_bzero($0.baseAddress!, $0.count) } }
            try call("Esys_TR_SetAuth") { esys in Esys_TR_SetAuth(esys, object.handle, &auth) }
        }

        // TPM2_Unseal has no command parameters; its response (the secret) is encrypted.
        try session.setAttributes(encryptCommand: false, encryptResponse: true)
        var out: UnsafeMutablePointer<TPM2B_SENSITIVE_DATA>?
        let code = withESYS { esys in
            Esys_Unseal(esys, object.handle, policy.handle, session.handle, ESYS_TR(ESYS_TR_NONE), &out)
        }
        guard code == TSS2_RC_SUCCESS, let out else {
            switch ResponseCode.base(code) {
            case ResponseCode.authFail, ResponseCode.badAuth: throw .authorizationFailed("unseal")
            case ResponseCode.lockout: throw .lockedOut("unseal")
            case ResponseCode.policyFail: throw try pcrFailure(.command("Esys_Unseal", code: code), expected: sealed.pcrValues)
            default: throw .command("Esys_Unseal", code: code)
            }
        }
        // SAFETY: `out` is ESYS's heap copy of the secret; it is copied into
        // locked memory, then zeroed and freed.
        defer {
            explicit_bzero(out, MemoryLayout<TPM2B_SENSITIVE_DATA>.size)
            Esys_Free(out)
        }
        let size = min(Int(out.pointee.size), Self.maxSealedLength)
        guard size > 0 else { throw .command("Esys_Unseal (empty secret)", code: code) }
        var bytes = withUnsafeBytes(of: &out.pointee.buffer) { Array($0.prefix(size)) }
        return SecretBytes.taking(&bytes)
    }

    /// Turns a failed PolicyPCR/Unseal into `.pcrMismatch` naming the PCRs
    /// that differ, or returns the original error if none does.
    private func pcrFailure(_ error: TPMError, expected: [Int: [UInt8]]) throws(TPMError) -> TPMError {
        let differing = try differingPCRs(from: expected)
        return differing.isEmpty ? error : .pcrMismatch(pcrs: differing)
    }

    /// The object authValue for a PIN: SHA-256 of its bytes (a TPM2B_AUTH
    /// holds at most a nameAlg digest).
    static func authValue(_ pin: SecretBytes) -> [UInt8] {
        pin.withUnsafeBytes { Array(SHA256.hash(data: $0)) }
    }

    /// A keyedhash data object: fixed to this TPM and parent, authorized only
    /// through `policy` (no userWithAuth). Without a PIN there is nothing to
    /// guess, so it is exempt from dictionary-attack lockout (noDA); with a
    /// PIN, wrong PINs count towards lockout.
    static func sealedObjectTemplate(policy: [UInt8], requiresPIN: Bool) throws(TPMError) -> TPM2B_PUBLIC {
        var template = TPM2B_PUBLIC()
        template.publicArea.type = TPM2_ALG_KEYEDHASH
        template.publicArea.nameAlg = TPM2_ALG_SHA256
        var attributes = TPMA_OBJECT_FIXEDTPM | TPMA_OBJECT_FIXEDPARENT
        if !requiresPIN { attributes |= TPMA_OBJECT_NODA }
        template.publicArea.objectAttributes = attributes
        template.publicArea.authPolicy = try TPM2B_DIGEST(bytes: policy)
        template.publicArea.parameters.keyedHashDetail.scheme.scheme = TPM2_ALG_NULL
        return template
    }
}
