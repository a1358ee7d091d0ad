import CTSS2
#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif

/// An open connection to a TPM 2.0: a TCTI transport chosen by a string
/// (tss2-tctildr) and an ESYS context over it. Owns both and finalizes them
/// on deinit. ESYS is not thread-safe, so every call goes through one
/// recursive lock; objects and sessions created from the context keep it
/// alive and flush themselves through it.
public final class TPMContext: @unchecked Sendable {
    /// The kernel's TPM resource manager, which also flushes what a crashed
    /// process leaves loaded.
    public static let defaultTCTI = "device:/dev/tpmrm0"

    /// The TCTI configuration this context was opened with.
    public let tcti: String
    // SAFETY: `transport` and `esys` are created in init and finalized in
    // deinit, and only used between, with `lock` held.
    private var transport: OpaquePointer?
    private var esys: OpaquePointer?
    private let lock: UnsafeMutablePointer<pthread_mutex_t>

    /// Opens the TPM at `tcti`: "device:/dev/tpmrm0", "swtpm:host=127.0.0.1,port=2321", ...
    public init(tcti: String = TPMContext.defaultTCTI) throws(TPMError) {
        self.tcti = tcti
        // tpm2-tss logs failed commands to stderr; this layer reports them as
        // TPMError instead, so a refusal stays one line. TSS2_LOG set by the
        // user (e.g. all+debug) still wins.
        setenv("TSS2_LOG", "all+NONE", 0)
        lock = .allocate(capacity: 1)
        lock.initialize(to: pthread_mutex_t())
        var attributes = pthread_mutexattr_t()
        pthread_mutexattr_init(&attributes)
        pthread_mutexattr_settype(&attributes, Int32(PTHREAD_MUTEX_RECURSIVE))
        pthread_mutex_init(lock, &attributes)
        pthread_mutexattr_destroy(&attributes)

        var transport: OpaquePointer?
        let loaded = Tss2_TctiLdr_Initialize(tcti, &transport)
        // Every stored property is initialized by now, so a throw below
        // runs deinit, which destroys the lock and finalizes what is set.
        guard loaded == TSS2_RC_SUCCESS, let transport else {
            throw .transportUnavailable(tcti: tcti, code: loaded)
        }
        var esys: OpaquePointer?
        let initialized = Esys_Initialize(&esys, transport, nil)
        guard initialized == TSS2_RC_SUCCESS, esys != nil else {
            var owned: OpaquePointer? = transport
            Tss2_TctiLdr_Finalize(&owned)
            throw .command("Esys_Initialize", code: initialized)
        }
        self.transport = transport
        self.esys = esys
    }

    deinit {
        if esys != nil { Esys_Finalize(&esys) }
        if transport != nil { Tss2_TctiLdr_Finalize(&transport) }
        pthread_mutex_destroy(lock)
        lock.deinitialize(count: 1)
        lock.deallocate()
    }

    /// Runs `body` with the ESYS context, holding the context's lock.
    func withESYS<T, E: Error>(_ body: (OpaquePointer) throws(E) -> T) throws(E) -> T {
        pthread_mutex_lock(lock)
        defer { pthread_mutex_unlock(lock) }
        return try body(esys!)
    }

    /// Runs one ESYS call under the lock and turns its response code into a
    /// `TPMError.command` naming `operation`.
    func call(_ operation: String, _ body: (OpaquePointer) -> TSS2_RC) throws(TPMError) {
        let code = withESYS(body)
        guard code == TSS2_RC_SUCCESS else { throw TPMError.command(operation, code: code) }
    }

    /// Flushes a transient object or session from the TPM; failures are
    /// ignored (the handle may already be gone, e.g. after a TPM restart).
    func flush(_ handle: ESYS_TR) {
        withESYS { esys in _ = Esys_FlushContext(esys, handle) }
    }

    /// Forgets an ESYS handle to a persistent entity (an NV index) without
    /// touching the TPM.
    func close(_ handle: ESYS_TR) {
        withESYS { esys in
            var handle = handle
            _ = Esys_TR_Close(esys, &handle)
        }
    }

    /// Random bytes from the TPM (TPM2_GetRandom), at most 32 a call.
    public func random(count: Int) throws(TPMError) -> [UInt8] {
        guard (1...32).contains(count) else { throw .invalidArgument("GetRandom of \(count) bytes (1...32)") }
        var digest: UnsafeMutablePointer<TPM2B_DIGEST>?
        try call("Esys_GetRandom") { esys in
            Esys_GetRandom(esys, ESYS_TR(ESYS_TR_NONE), ESYS_TR(ESYS_TR_NONE), ESYS_TR(ESYS_TR_NONE), UInt16(count), &digest)
        }
        defer { Esys_Free(digest) }
        return digest!.pointee.bytes
    }
}
