import CTSS2

/// A TPM NV counter index (TPM2_NV_DefineSpace with TPM_NT_COUNTER): an
/// 8-byte value the TPM only ever increments (TPM2_NV_Increment), kept in
/// its non-volatile memory. Owner authorization (empty by default) for
/// every operation, no dictionary-attack accounting. A counter redefined
/// after being undefined starts no lower than any counter this TPM ever
/// held, so undefining does not roll it back.
///
/// Every operation runs in an HMAC session salted with the primary storage
/// key, so ESYS checks the response HMAC: with `primaryName` pinned, a
/// transport that impersonates the TPM cannot forge a counter value.
public final class TPMNVCounter: Sendable {
    /// Owner-defined NV indices this layer hands out: base + slot.
    public static let defaultBase: UInt32 = 0x0150_0000
    /// TPM_HT_NV_INDEX handles: 0x01000000...0x01FFFFFF.
    public static let indexRange: ClosedRange<UInt32> = 0x0100_0000...0x01FF_FFFF

    /// The attributes a counter of this layer has when defined.
    static let attributes: TPMA_NV =
        (TPMA_NV(TPM2_NT_COUNTER) << TPMA_NV(TPMA_NV_TPM2_NT_SHIFT)) | TPMA_NV_OWNERWRITE | TPMA_NV_OWNERREAD | TPMA_NV_NO_DA
    /// Attributes the TPM sets as the index is used.
    static let stateAttributes: TPMA_NV = TPMA_NV_WRITTEN | TPMA_NV_WRITELOCKED | TPMA_NV_READLOCKED

    let context: TPMContext
    /// The TPM handle of the index (0x01xxxxxx).
    public let index: UInt32
    /// The Name of the primary key sessions must be salted with, if pinned.
    public let primaryName: [UInt8]?
    // The ESYS handle for the index; an ESYS_TR is a plain integer that
    // stays valid for the context's lifetime.
    let handle: ESYS_TR

    private init(context: TPMContext, index: UInt32, handle: ESYS_TR, primaryName: [UInt8]?) {
        self.context = context
        self.index = index
        self.handle = handle
        self.primaryName = primaryName
    }

    deinit { context.close(handle) }

    /// The index of counter `slot` in the range starting at `base`.
    public static func index(slot: UInt32, base: UInt32 = defaultBase) throws(TPMError) -> UInt32 {
        let (index, overflow) = base.addingReportingOverflow(slot)
        guard !overflow, indexRange.contains(base), indexRange.contains(index) else {
            throw .invalidArgument("NV index 0x\(hex(base)) + \(slot) is outside 0x01000000...0x01FFFFFF")
        }
        return index
    }

    /// Defines the counter at `index` and increments it once, so that it
    /// holds a value (an unwritten counter cannot be read).
    public static func define(context: TPMContext, index: UInt32, primaryName: [UInt8]? = nil) throws(TPMError) -> TPMNVCounter {
        guard indexRange.contains(index) else { throw .invalidArgument("NV index 0x\(hex(index))") }
        var auth = TPM2B_AUTH()
        var info = TPM2B_NV_PUBLIC()
        info.nvPublic.nvIndex = index
        info.nvPublic.nameAlg = TPM2_ALG_SHA256
        info.nvPublic.attributes = attributes
        info.nvPublic.dataSize = 8
        var handle = ESYS_TR(ESYS_TR_NONE)
        try withOwnerSession(context: context, primaryName: primaryName) { session throws(TPMError) in
            try context.call("Esys_NV_DefineSpace") { esys in
                Esys_NV_DefineSpace(
                    esys, ESYS_TR(ESYS_TR_RH_OWNER), session, ESYS_TR(ESYS_TR_NONE), ESYS_TR(ESYS_TR_NONE),
                    &auth, &info, &handle)
            }
        }
        let counter = TPMNVCounter(context: context, index: index, handle: handle, primaryName: primaryName)
        _ = try counter.increment()
        return counter
    }

    /// Opens the counter already defined at `index`, checking that it is a
    /// counter with exactly the attributes `define` gives.
    public static func open(context: TPMContext, index: UInt32, primaryName: [UInt8]? = nil) throws(TPMError) -> TPMNVCounter {
        guard indexRange.contains(index) else { throw .invalidArgument("NV index 0x\(hex(index))") }
        var handle = ESYS_TR(ESYS_TR_NONE)
        let code = context.withESYS { esys in
            Esys_TR_FromTPMPublic(esys, index, ESYS_TR(ESYS_TR_NONE), ESYS_TR(ESYS_TR_NONE), ESYS_TR(ESYS_TR_NONE), &handle)
        }
        guard code == TSS2_RC_SUCCESS else {
            if ResponseCode.base(code) == ResponseCode.handle { throw .nvIndexUndefined(index) }
            throw .command("Esys_TR_FromTPMPublic", code: code)
        }
        let counter = TPMNVCounter(context: context, index: index, handle: handle, primaryName: primaryName)
        var info: UnsafeMutablePointer<TPM2B_NV_PUBLIC>?
        var name: UnsafeMutablePointer<TPM2B_NAME>?
        try context.call("Esys_NV_ReadPublic") { esys in
            Esys_NV_ReadPublic(esys, handle, ESYS_TR(ESYS_TR_NONE), ESYS_TR(ESYS_TR_NONE), ESYS_TR(ESYS_TR_NONE), &info, &name)
        }
        defer {
            Esys_Free(info)
            Esys_Free(name)
        }
        let found = info!.pointee.nvPublic
        guard found.attributes & ~stateAttributes == attributes else {
            throw .nvIndexNotACounter(index, "attributes 0x\(hex(found.attributes)), expected 0x\(hex(attributes))")
        }
        guard found.dataSize == 8, found.nameAlg == TPM2_ALG_SHA256, found.authPolicy.size == 0 else {
            throw .nvIndexNotACounter(index, "size \(found.dataSize), name algorithm 0x\(String(found.nameAlg, radix: 16)), policy of \(found.authPolicy.size) bytes")
        }
        return counter
    }

    /// TPM2_NV_Read of the 8-byte big-endian counter value.
    public func read() throws(TPMError) -> UInt64 {
        var data: UnsafeMutablePointer<TPM2B_MAX_NV_BUFFER>?
        let handle = handle
        try Self.withOwnerSession(context: context, primaryName: primaryName) { session throws(TPMError) in
            try context.call("Esys_NV_Read") { esys in
                Esys_NV_Read(esys, ESYS_TR(ESYS_TR_RH_OWNER), handle, session, ESYS_TR(ESYS_TR_NONE), ESYS_TR(ESYS_TR_NONE), 8, 0, &data)
            }
        }
        defer { Esys_Free(data) }
        let bytes = load(Int(data!.pointee.size), from: data!.pointee.buffer)
        guard bytes.count == 8 else { throw .command("Esys_NV_Read (\(bytes.count) bytes for a counter)", code: 0) }
        return bytes.reduce(0) { $0 << 8 | UInt64($1) }
    }

    /// TPM2_NV_Increment, then the new value.
    @discardableResult
    public func increment() throws(TPMError) -> UInt64 {
        let handle = handle
        try Self.withOwnerSession(context: context, primaryName: primaryName) { session throws(TPMError) in
            try context.call("Esys_NV_Increment") { esys in
                Esys_NV_Increment(esys, ESYS_TR(ESYS_TR_RH_OWNER), handle, session, ESYS_TR(ESYS_TR_NONE), ESYS_TR(ESYS_TR_NONE))
            }
        }
        return try read()
    }

    /// TPM2_NV_UndefineSpace. The counter object must not be used afterwards.
    public func undefine() throws(TPMError) {
        let handle = handle
        try Self.withOwnerSession(context: context, primaryName: primaryName) { session throws(TPMError) in
            try context.call("Esys_NV_UndefineSpace") { esys in
                Esys_NV_UndefineSpace(esys, ESYS_TR(ESYS_TR_RH_OWNER), handle, session, ESYS_TR(ESYS_TR_NONE), ESYS_TR(ESYS_TR_NONE))
            }
        }
    }

    /// Runs `body` with a fresh HMAC session salted with the primary key
    /// (checked against `primaryName` when given), authorizing as the owner.
    static func withOwnerSession(
        context: TPMContext, primaryName: [UInt8]?, _ body: (ESYS_TR) throws(TPMError) -> Void
    ) throws(TPMError) {
        let primary = try TPMPrimaryKey(context: context)
        if let primaryName, primary.name != primaryName {
            throw .primaryKeyMismatch(expected: primaryName, found: primary.name)
        }
        let session = try TPMSession(context: context, kind: .hmac, saltedWith: primary)
        try body(session.handle)
    }
}

/// A pool's trust anchor kept in a TPM NV counter: the counter moves once
/// per epoch (`advance()`), and a pool whose committed epoch is behind
/// `current()` has been rolled back. Detects restoring the whole pool to any
/// state before the last advanced epoch, across reboots and reinstalls of
/// the crypt domain's state; not a rollback within the current epoch.
public final class TPMCounterAnchor: Sendable {
    public let counter: TPMNVCounter
    /// Whether this init defined the counter (it did not exist before).
    public let defined: Bool

    /// Opens the counter at `index`, defining it first if it does not exist
    /// and `create` is set.
    public init(context: TPMContext, index: UInt32, create: Bool = true, primaryName: [UInt8]? = nil) throws(TPMError) {
        do {
            counter = try TPMNVCounter.open(context: context, index: index, primaryName: primaryName)
            defined = false
        } catch .nvIndexUndefined(let missing) where create {
            counter = try TPMNVCounter.define(context: context, index: missing, primaryName: primaryName)
            defined = true
        }
    }

    /// The counter's value: the newest epoch any pool state may claim.
    public func current() throws(TPMError) -> UInt64 { try counter.read() }

    /// Moves the counter to the next epoch and returns it. Each call wears
    /// the TPM's NV memory: once per clean close or configured interval.
    @discardableResult
    public func advance() throws(TPMError) -> UInt64 { try counter.increment() }
}
