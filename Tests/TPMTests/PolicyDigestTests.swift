import Testing
import TPM

/// The offline policy computation against known answers and against what
/// the TPM computes in trial sessions.
struct PolicyDigestTests {
    @Test func policyAuthValueFromTheEmptyPolicyIsTheWellKnownDigest() {
        #expect(hex(PolicyDigest.policyAuthValue(PolicyDigest.initial))
            == "8fcd2169ab92694e0c633f1ab772842b8241bbc20288981fc7ac1eddc1fddb0e")
    }

    @Test func pcrValuesAreHashedInAscendingOrderWhateverTheDictionaryOrder() throws {
        let a = randomDigest()
        let b = randomDigest()
        #expect(try PolicyDigest.policyPCR(PolicyDigest.initial, values: [3: a, 11: b])
            != PolicyDigest.policyPCR(PolicyDigest.initial, values: [3: b, 11: a]))
        #expect(throws: TPMError.self) { try PolicyDigest.policyPCR(PolicyDigest.initial, values: [3: [1, 2]]) }
    }
}

@Suite(.enabled(if: SoftwareTPM.shouldRun, "swtpm is not installed"))
struct TrialSessionPolicyTests {
    @Test(arguments: [[7], [0, 7], [7, 15, 23], [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10]])
    func offlinePolicyPCREqualsTheTrialSession(pcrs: [Int]) throws {
        let tpm = try SoftwareTPM()
        let context = try TPMContext(tcti: tpm.tcti)
        // Arbitrary (predicted) values: a trial session takes them as given.
        var values: [Int: [UInt8]] = [:]
        for index in pcrs { values[index] = randomDigest() }
        for requiresPIN in [false, true] {
            let offline = try PolicyDigest.sealingPolicy(values: values, requiresPIN: requiresPIN)
            let trial = try context.trialPolicy(values: values, requiresPIN: requiresPIN)
            #expect(offline == trial, "PCRs \(pcrs), PIN \(requiresPIN)")
        }
    }

    @Test func offlinePolicyOfTheCurrentPCRsEqualsTheTrialSession() throws {
        let tpm = try SoftwareTPM()
        let context = try TPMContext(tcti: tpm.tcti)
        try context.extendPCR(7, digest: randomDigest())
        let values = try context.readPCRs(PCRSelection([0, 7, 17]))
        #expect(try PolicyDigest.sealingPolicy(values: values, requiresPIN: false)
            == context.trialPolicy(values: values, requiresPIN: false))
    }

    @Test func pinOnlyPolicyEqualsTheTrialSession() throws {
        let tpm = try SoftwareTPM()
        let context = try TPMContext(tcti: tpm.tcti)
        #expect(try PolicyDigest.sealingPolicy(values: [:], requiresPIN: true)
            == context.trialPolicy(values: [:], requiresPIN: true))
    }
}

func hex(_ bytes: [UInt8]) -> String {
    bytes.map { String($0, radix: 16).count == 1 ? "0" + String($0, radix: 16) : String($0, radix: 16) }.joined()
}
