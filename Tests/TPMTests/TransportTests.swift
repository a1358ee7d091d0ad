import Testing
import TPM

/// What crosses the TPM transport: recorded by a proxy between the TCTI and
/// swtpm, as a process able to watch /dev/tpm* traffic would see it.
@Suite(.enabled(if: SoftwareTPM.shouldRun, "swtpm is not installed"))
struct TransportTests {
    @Test func secretAndPINNeverCrossTheTransportInClear() throws {
        let tpm = try SoftwareTPM()
        let proxy = try CapturingProxy(forwardingTo: tpm.port)
        let context = try TPMContext(tcti: proxy.tcti)

        // Control: what is not encrypted (an extend digest) IS found, so the
        // capture and the search work.
        let marker = randomDigest()
        try context.extendPCR(16, digest: marker)
        #expect(containsAnyWindow(of: marker, window: 32, in: proxy.captured))

        let (bytes, secret) = randomSecret(32)
        let pin = Array("a rather long PIN 0123456789".utf8)
        let sealed = try context.seal(secret, toCurrent: PCRSelection([7, 16]), pin: TPMTests.secret(String(decoding: pin, as: UTF8.self)))
        let unsealed = try context.unseal(sealed, pin: TPMTests.secret(String(decoding: pin, as: UTF8.self)))
        #expect(contents(unsealed) == bytes)

        let captured = proxy.captured
        // TPM2_Unseal (TPM_CC 0x15E) went through this proxy...
        #expect(containsAnyWindow(of: [0x00, 0x00, 0x01, 0x5E], window: 4, in: proxy.commands.value))
        // ...yet no 8-byte run of the secret, nor of the PIN, appears.
        #expect(!containsAnyWindow(of: bytes, window: 8, in: captured))
        #expect(!containsAnyWindow(of: pin, window: 8, in: captured))
        proxy.stop()
    }
}
