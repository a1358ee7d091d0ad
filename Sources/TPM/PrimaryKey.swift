import CTSS2

/// The primary storage key (SRK) under the owner hierarchy, from the TCG
/// ECC P-256 template (restricted decryption key, AES-128-CFB, empty
/// unique). A primary key is derived from the hierarchy's seed and the
/// template, so creating it again yields the same key: this layer creates it
/// per use and flushes it afterwards, and persists nothing in the TPM.
/// Flushed on deinit.
public final class TPMPrimaryKey {
    let context: TPMContext
    let handle: ESYS_TR
    /// The key's TPM Name (nameAlg ‖ SHA-256 of its public area), which
    /// identifies this TPM's owner hierarchy.
    public let name: [UInt8]

    /// TPM2_CreatePrimary in the owner hierarchy (empty owner authorization).
    public init(context: TPMContext) throws(TPMError) {
        self.context = context
        var sensitive = TPM2B_SENSITIVE_CREATE()
        var template = Self.template
        var outsideInfo = TPM2B_DATA()
        var creationPCR = TPML_PCR_SELECTION()
        var handle = ESYS_TR(ESYS_TR_NONE)
        var outPublic: UnsafeMutablePointer<TPM2B_PUBLIC>?
        var creationData: UnsafeMutablePointer<TPM2B_CREATION_DATA>?
        var creationHash: UnsafeMutablePointer<TPM2B_DIGEST>?
        var creationTicket: UnsafeMutablePointer<TPMT_TK_CREATION>?
        try context.call("Esys_CreatePrimary") { esys in
            Esys_CreatePrimary(
                esys, ESYS_TR(ESYS_TR_RH_OWNER), ESYS_TR(ESYS_TR_PASSWORD), ESYS_TR(ESYS_TR_NONE), ESYS_TR(ESYS_TR_NONE),
                &sensitive, &template, &outsideInfo, &creationPCR,
                &handle, &outPublic, &creationData, &creationHash, &creationTicket)
        }
        Esys_Free(outPublic)
        Esys_Free(creationData)
        Esys_Free(creationHash)
        Esys_Free(creationTicket)
        self.handle = handle
        var name: UnsafeMutablePointer<TPM2B_NAME>?
        do {
            try context.call("Esys_TR_GetName") { esys in Esys_TR_GetName(esys, handle, &name) }
        } catch {
            context.flush(handle)
            throw error
        }
        self.name = name!.pointee.bytes
        Esys_Free(name)
    }

    deinit { context.flush(handle) }

    /// The SRK template of the TCG TPM v2.0 Provisioning Guidance (ECC NIST
    /// P-256 storage key): the same key other software derives from it.
    static var template: TPM2B_PUBLIC {
        var template = TPM2B_PUBLIC()
        template.publicArea.type = TPM2_ALG_ECC
        template.publicArea.nameAlg = TPM2_ALG_SHA256
        template.publicArea.objectAttributes =
            TPMA_OBJECT_FIXEDTPM | TPMA_OBJECT_FIXEDPARENT | TPMA_OBJECT_SENSITIVEDATAORIGIN
            | TPMA_OBJECT_USERWITHAUTH | TPMA_OBJECT_NODA | TPMA_OBJECT_RESTRICTED | TPMA_OBJECT_DECRYPT
        template.publicArea.parameters.eccDetail.symmetric.algorithm = TPM2_ALG_AES
        template.publicArea.parameters.eccDetail.symmetric.keyBits.aes = 128
        template.publicArea.parameters.eccDetail.symmetric.mode.aes = TPM2_ALG_CFB
        template.publicArea.parameters.eccDetail.scheme.scheme = TPM2_ALG_NULL
        template.publicArea.parameters.eccDetail.curveID = TPM2_ECC_NIST_P256
        template.publicArea.parameters.eccDetail.kdf.scheme = TPM2_ALG_NULL
        return template
    }
}
