import Keys
import Testing
import TPM

@Suite(.enabled(if: SoftwareTPM.shouldRun, "swtpm is not installed"))
struct SealTests {
    @Test func sealsAndUnsealsThroughTheSerializedBlob() throws {
        let tpm = try SoftwareTPM()
        let context = try TPMContext(tcti: tpm.tcti)
        try context.extendPCR(7, digest: randomDigest())
        let (bytes, secret) = randomSecret(32)
        let sealed = try context.seal(secret, toCurrent: PCRSelection([7, 15]))
        let blob = sealed.serialized()
        #expect(blob.count <= TPMSealedSecret.maxSerializedLength)
        let parsed = try TPMSealedSecret(serialized: blob)
        #expect(parsed == sealed)
        #expect(parsed.pcrs.indices == [7, 15])
        #expect(!parsed.requiresPIN)
        // A fresh context: nothing but the blob carries over.
        let reopened = try TPMContext(tcti: tpm.tcti)
        #expect(try contents(reopened.unseal(parsed)) == bytes)
        // Unsealing leaves nothing loaded: it can be repeated many times
        // without exhausting the simulator's few object and session slots.
        for _ in 0..<8 { #expect(try contents(reopened.unseal(parsed)) == bytes) }
    }

    @Test func refusesAfterASealedPCRIsExtendedAndNamesIt() throws {
        let tpm = try SoftwareTPM()
        let context = try TPMContext(tcti: tpm.tcti)
        let (bytes, secret) = randomSecret(64)
        let sealed = try context.seal(secret, toCurrent: PCRSelection([7, 15, 16]))
        #expect(try contents(context.unseal(sealed)) == bytes)
        try context.extendPCR(16, digest: randomDigest())
        #expect(throws: TPMError.pcrMismatch(pcrs: [16])) { try context.unseal(sealed) }
        try context.extendPCR(7, digest: randomDigest())
        let error = #expect(throws: TPMError.self) { try context.unseal(sealed) }
        #expect(error == .pcrMismatch(pcrs: [7, 16]))
        #expect(error?.description.contains("PCR 7, 16") == true)
        #expect(error?.description.contains("recovery key") == true)
        // A PCR outside the selection does not matter.
        let other = try context.seal(secret, toCurrent: PCRSelection([7]))
        try context.extendPCR(15, digest: randomDigest())
        #expect(try contents(context.unseal(other)) == bytes)
    }

    @Test func pinIsRequiredAndChecked() throws {
        let tpm = try SoftwareTPM()
        let context = try TPMContext(tcti: tpm.tcti)
        let (bytes, secret) = randomSecret(32)
        let sealed = try context.seal(secret, toCurrent: PCRSelection([7]), pin: TPMTests.secret("4711-correct"))
        #expect(sealed.requiresPIN)
        #expect(throws: TPMError.pinRequired) { try context.unseal(sealed) }
        #expect(throws: TPMError.authorizationFailed("unseal")) {
            try context.unseal(sealed, pin: TPMTests.secret("4711-wrong"))
        }
        #expect(try contents(context.unseal(sealed, pin: TPMTests.secret("4711-correct"))) == bytes)
        // The PCR policy still holds with the right PIN.
        try context.extendPCR(7, digest: randomDigest())
        #expect(throws: TPMError.pcrMismatch(pcrs: [7])) {
            try context.unseal(sealed, pin: TPMTests.secret("4711-correct"))
        }
    }

    @Test func pinOnlySecretNeedsNoPCRs() throws {
        let tpm = try SoftwareTPM()
        let context = try TPMContext(tcti: tpm.tcti)
        let (bytes, secret) = randomSecret(16)
        let sealed = try context.seal(secret, to: [:], pin: TPMTests.secret("pin"))
        try context.extendPCR(7, digest: randomDigest())
        #expect(try contents(context.unseal(sealed, pin: TPMTests.secret("pin"))) == bytes)
        #expect(throws: TPMError.self) { try context.seal(secret, to: [:]) }
    }

    @Test func predictedValuesUnsealOnlyAfterThePredictedMeasurement() throws {
        let tpm = try SoftwareTPM()
        let context = try TPMContext(tcti: tpm.tcti)
        let (bytes, secret) = randomSecret(32)
        let now = try context.readPCRs(PCRSelection([7, 15]))
        let measurement = randomDigest()
        var predicted = now
        predicted[15] = PolicyDigest.extend(now[15]!, with: measurement)
        let sealed = try context.seal(secret, to: predicted)
        #expect(throws: TPMError.pcrMismatch(pcrs: [15])) { try context.unseal(sealed) }
        try context.extendPCR(15, digest: measurement)
        #expect(try contents(context.unseal(sealed)) == bytes)
    }

    @Test func anotherTPMIsRecognisedByItsPrimaryKey() throws {
        let first = try SoftwareTPM()
        let second = try SoftwareTPM()
        let context = try TPMContext(tcti: first.tcti)
        let (_, secret) = randomSecret(32)
        let sealed = try context.seal(secret, toCurrent: PCRSelection([7]))
        let elsewhere = try TPMContext(tcti: second.tcti)
        let error = #expect(throws: TPMError.self) { try elsewhere.unseal(sealed) }
        guard case .primaryKeyMismatch(let expected, let found) = error else {
            Issue.record("expected primaryKeyMismatch, got \(String(describing: error))")
            return
        }
        #expect(expected == sealed.primaryName)
        #expect(found != expected)
    }

    @Test func theLargestBlobFitsAKeyslot() throws {
        let tpm = try SoftwareTPM()
        let context = try TPMContext(tcti: tpm.tcti)
        let (bytes, secret) = randomSecret(TPMContext.maxSealedLength)
        let sealed = try context.seal(secret, toCurrent: PCRSelection(0..<24), pin: TPMTests.secret("pin"))
        let blob = sealed.serialized()
        #expect(blob.count <= TPMSealedSecret.maxSerializedLength)
        let parsed = try TPMSealedSecret(serialized: blob)
        #expect(parsed.pcrs.indices == Array(0..<24))
        #expect(try contents(context.unseal(parsed, pin: TPMTests.secret("pin"))) == bytes)
    }

    @Test func refusesSecretsTooLongForTheTPM() throws {
        let tpm = try SoftwareTPM()
        let context = try TPMContext(tcti: tpm.tcti)
        let (_, secret) = randomSecret(TPMContext.maxSealedLength + 1)
        #expect(throws: TPMError.self) { try context.seal(secret, toCurrent: PCRSelection([7])) }
    }
}

@Suite(.enabled(if: SoftwareTPM.shouldRun, "swtpm is not installed"))
struct SealedBlobParsingTests {
    /// One real blob, made once per test.
    func blob() throws -> [UInt8] {
        let tpm = try SoftwareTPM()
        let context = try TPMContext(tcti: tpm.tcti)
        return try context.seal(randomSecret(32).secret, toCurrent: PCRSelection([0, 7]), pin: secret("1")).serialized()
    }

    @Test func rejectsEveryTruncationAndTrailingBytes() throws {
        let bytes = try blob()
        #expect(try TPMSealedSecret(serialized: bytes).requiresPIN)
        for length in 0..<bytes.count {
            #expect(throws: TPMError.self) { try TPMSealedSecret(serialized: Array(bytes.prefix(length))) }
        }
        #expect(throws: TPMError.self) { try TPMSealedSecret(serialized: bytes + [0]) }
    }

    @Test func rejectsBadMagicVersionFlagsAndPCRBits() throws {
        let bytes = try blob()
        for (offset, value) in [(0, UInt8(0x41)), (4, 2), (5, 0x82), (6, 0x01)] {
            var bad = bytes
            bad[offset] = value
            #expect(throws: TPMError.self, "byte \(offset) = \(value)") { try TPMSealedSecret(serialized: bad) }
        }
        #expect(throws: TPMError.self) {
            try TPMSealedSecret(serialized: [UInt8](repeating: 0, count: TPMSealedSecret.maxSerializedLength + 1))
        }
    }
}
