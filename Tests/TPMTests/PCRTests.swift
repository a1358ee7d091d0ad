import Testing
import TPM

@Suite(.enabled(if: SoftwareTPM.shouldRun, "swtpm is not installed"))
struct PCRTests {
    @Test func readsEveryPCROfTheSHA256Bank() throws {
        let tpm = try SoftwareTPM()
        let context = try TPMContext(tcti: tpm.tcti)
        let values = try context.readPCRs(PCRSelection(0..<24))
        #expect(values.keys.sorted() == Array(0..<24))
        #expect(values.values.allSatisfy { $0.count == 32 })
        // A fresh simulator has measured nothing: PCR 0 is zero, and the
        // resettable PCRs 17...22 are all ones before a dynamic launch.
        #expect(values[0] == [UInt8](repeating: 0, count: 32))
        #expect(values[17] == [UInt8](repeating: 0xFF, count: 32))
    }

    @Test func extendChainsSHA256AndTouchesOnlyThatPCR() throws {
        let tpm = try SoftwareTPM()
        let context = try TPMContext(tcti: tpm.tcti)
        let selection = try PCRSelection([7, 15, 16])
        let before = try context.readPCRs(selection)
        let first = randomDigest()
        let second = randomDigest()
        try context.extendPCR(15, digest: first)
        try context.extendPCR(15, digest: second)
        let after = try context.readPCRs(selection)
        let predicted = PolicyDigest.extend(PolicyDigest.extend(before[15]!, with: first), with: second)
        #expect(after[15] == predicted)
        #expect(after[7] == before[7])
        #expect(after[16] == before[16])
        #expect(try context.differingPCRs(from: before) == [15])
    }

    @Test func refusesPCRsOutsideTheBankAndShortDigests() throws {
        #expect(throws: TPMError.invalidArgument("PCR 24 (valid: 0...23)")) { try PCRSelection([1, 24]) }
        let tpm = try SoftwareTPM()
        let context = try TPMContext(tcti: tpm.tcti)
        #expect(throws: TPMError.self) { try context.extendPCR(16, digest: [1, 2, 3]) }
    }

    @Test func randomBytesComeFromTheTPM() throws {
        let tpm = try SoftwareTPM()
        let context = try TPMContext(tcti: tpm.tcti)
        let first = try context.random(count: 32)
        let second = try context.random(count: 32)
        #expect(first.count == 32 && second.count == 32)
        #expect(first != second)
        #expect(throws: TPMError.self) { try context.random(count: 33) }
    }

    @Test func anUnreachableTransportIsAnErrorNotACrash() throws {
        // A port nothing listens on: the TCTI loader or ESYS fails cleanly.
        let port = try freePortPair()
        #expect(throws: TPMError.self) { try TPMContext(tcti: "swtpm:host=127.0.0.1,port=\(port)") }
    }
}
