import CTSS2

/// An authorization session (TPM2_StartAuthSession), flushed on deinit.
///
/// Sessions used with secrets are salted with the primary storage key: ESYS
/// encrypts a random salt to that key, so only the TPM holding it can derive
/// the session key, and parameters marked for encryption (AES-128-CFB) cross
/// the transport encrypted.
public final class TPMSession {
    public enum Kind: Sendable {
        /// An HMAC session: authorizes with HMACs and carries parameter encryption.
        case hmac
        /// A policy session: authorizes by the policy commands run in it.
        case policy
        /// A trial policy session: only accumulates a policy digest.
        case trial
    }

    let context: TPMContext
    let handle: ESYS_TR
    public let kind: Kind

    /// Starts a session; `saltedWith` makes it salted with that key (and
    /// able to encrypt parameters). Trial sessions are never salted.
    public init(context: TPMContext, kind: Kind, saltedWith key: TPMPrimaryKey?) throws(TPMError) {
        self.context = context
        self.kind = kind
        var symmetric = TPMT_SYM_DEF()
        let type: TPM2_SE
        switch kind {
        case .hmac: type = TPM2_SE_HMAC
        case .policy: type = TPM2_SE_POLICY
        case .trial: type = TPM2_SE_TRIAL
        }
        let salted = kind == .trial ? nil : key
        if salted != nil {
            symmetric.algorithm = TPM2_ALG_AES
            symmetric.keyBits.aes = 128
            symmetric.mode.aes = TPM2_ALG_CFB
        } else {
            symmetric.algorithm = TPM2_ALG_NULL
        }
        var handle = ESYS_TR(ESYS_TR_NONE)
        try context.call("Esys_StartAuthSession") { esys in
            Esys_StartAuthSession(
                esys, salted?.handle ?? ESYS_TR(ESYS_TR_NONE), ESYS_TR(ESYS_TR_NONE),
                ESYS_TR(ESYS_TR_NONE), ESYS_TR(ESYS_TR_NONE), ESYS_TR(ESYS_TR_NONE),
                nil, type, &symmetric, TPM2_ALG_SHA256, &handle)
        }
        self.handle = handle
        // Keep the session across commands; deinit flushes it.
        do { try setAttributes(encryptCommand: false, encryptResponse: false) } catch {
            context.flush(handle)
            throw error
        }
    }

    deinit { context.flush(handle) }

    /// Sets which parameters the next command using this session encrypts:
    /// its first command parameter (TPMA_SESSION_DECRYPT, only for commands
    /// whose first parameter is a sized buffer) and its first response
    /// parameter (TPMA_SESSION_ENCRYPT).
    public func setAttributes(encryptCommand: Bool, encryptResponse: Bool) throws(TPMError) {
        var flags = TPMA_SESSION(TPMA_SESSION_CONTINUESESSION)
        if encryptCommand { flags |= TPMA_SESSION(TPMA_SESSION_DECRYPT) }
        if encryptResponse { flags |= TPMA_SESSION(TPMA_SESSION_ENCRYPT) }
        let handle = handle
        try context.call("Esys_TRSess_SetAttributes") { esys in
            Esys_TRSess_SetAttributes(esys, handle, flags, 0xFF)
        }
    }

    /// The attributes ESYS will send with this session.
    public var attributes: TPMA_SESSION {
        get throws(TPMError) {
            var flags = TPMA_SESSION()
            let handle = handle
            try context.call("Esys_TRSess_GetAttributes") { esys in Esys_TRSess_GetAttributes(esys, handle, &flags) }
            return flags
        }
    }

    /// TPM2_PolicyPCR: binds the policy to the SHA-256 PCRs of `values`
    /// holding exactly those values. In a trial session the values are
    /// taken as given; in a policy session the TPM compares them with the
    /// current PCRs and fails with TPM_RC_VALUE if they differ.
    public func policyPCR(_ values: [Int: [UInt8]]) throws(TPMError) {
        var digest = try TPM2B_DIGEST(bytes: PolicyDigest.pcrDigest(values))
        var selection = try PCRSelection(values.keys).list
        let handle = handle
        try context.call("Esys_PolicyPCR") { esys in
            Esys_PolicyPCR(
                esys, handle, ESYS_TR(ESYS_TR_NONE), ESYS_TR(ESYS_TR_NONE), ESYS_TR(ESYS_TR_NONE),
                &digest, &selection)
        }
    }

    /// TPM2_PolicyAuthValue: the object's authValue (the PIN) must also be
    /// proven, by an HMAC keyed with it.
    public func policyAuthValue() throws(TPMError) {
        let handle = handle
        try context.call("Esys_PolicyAuthValue") { esys in
            Esys_PolicyAuthValue(esys, handle, ESYS_TR(ESYS_TR_NONE), ESYS_TR(ESYS_TR_NONE), ESYS_TR(ESYS_TR_NONE))
        }
    }

    /// TPM2_PolicyGetDigest: the policy digest accumulated so far.
    public func policyDigest() throws(TPMError) -> [UInt8] {
        var digest: UnsafeMutablePointer<TPM2B_DIGEST>?
        let handle = handle
        try context.call("Esys_PolicyGetDigest") { esys in
            Esys_PolicyGetDigest(esys, handle, ESYS_TR(ESYS_TR_NONE), ESYS_TR(ESYS_TR_NONE), ESYS_TR(ESYS_TR_NONE), &digest)
        }
        defer { Esys_Free(digest) }
        return digest!.pointee.bytes
    }
}

extension TPMContext {
    /// The policy digest the TPM computes in a trial session for PolicyPCR
    /// over `values` (skipped when empty), then PolicyAuthValue when a PIN
    /// is required. Equals `PolicyDigest.sealingPolicy(values:requiresPIN:)`.
    public func trialPolicy(values: [Int: [UInt8]], requiresPIN: Bool) throws(TPMError) -> [UInt8] {
        let trial = try TPMSession(context: self, kind: .trial, saltedWith: nil)
        if !values.isEmpty { try trial.policyPCR(values) }
        if requiresPIN { try trial.policyAuthValue() }
        return try trial.policyDigest()
    }
}
