import Testing
@testable import TPM

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
        let markerSeen = containsAnyWindow(of: marker, window: 32, in: proxy.captured)
        #expect(markerSeen, "the capture misses a digest sent in clear")

        let (bytes, secret) = randomSecret(32)
        let pinText = "a rather long PIN 0123456789"
        let pin = Array(pinText.utf8)
        let sealed = try context.seal(secret, toCurrent: PCRSelection([7, 16]), pin: TPMTests.secret(pinText))
        let unsealed = try context.unseal(sealed, pin: TPMTests.secret(pinText))
        #expect(contents(unsealed) == bytes)

        let captured = proxy.captured
        // TPM2_Unseal (TPM_CC 0x15E) went through this proxy...
        let unsealSeen = containsAnyWindow(of: [0x00, 0x00, 0x01, 0x5E], window: 4, in: proxy.commands.value)
        #expect(unsealSeen, "no TPM2_Unseal command went through the proxy")
        // ...yet no 8-byte run of the secret, nor of the PIN, appears.
        let secretSeen = containsAnyWindow(of: bytes, window: 8, in: captured)
        // What the TPM stores and HMACs with is the PIN's authValue.
        let authValue = TPMContext.authValue(TPMTests.secret(pinText))
        let pinSeen = containsAnyWindow(of: pin, window: 8, in: captured)
            || containsAnyWindow(of: authValue, window: 8, in: captured)
        #expect(!secretSeen, "the secret crossed the transport in clear")
        #expect(!pinSeen, "the PIN crossed the transport in clear")
        proxy.stop()
    }
}
