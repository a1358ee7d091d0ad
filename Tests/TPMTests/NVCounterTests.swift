import Testing
import TPM

@Suite(.enabled(if: SoftwareTPM.shouldRun, "swtpm is not installed"))
struct NVCounterTests {
    @Test func definesIncrementsReadsAndUndefines() throws {
        let tpm = try SoftwareTPM()
        let context = try TPMContext(tcti: tpm.tcti)
        let index = try TPMNVCounter.index(slot: 3)
        #expect(index == 0x0150_0003)
        let counter = try TPMNVCounter.define(context: context, index: index)
        let start = try counter.read()
        #expect(try counter.increment() == start + 1)
        #expect(try counter.increment() == start + 2)
        #expect(try counter.read() == start + 2)
        // Defining it again is refused by the TPM (TPM_RC_NV_DEFINED).
        #expect(throws: TPMError.self) { try TPMNVCounter.define(context: context, index: index) }
        let reopened = try TPMNVCounter.open(context: context, index: index)
        #expect(try reopened.read() == start + 2)
        try counter.undefine()
        #expect(throws: TPMError.nvIndexUndefined(index)) { try TPMNVCounter.open(context: context, index: index) }
        // A counter defined anew starts no lower than the one undefined.
        let again = try TPMNVCounter.define(context: context, index: index)
        #expect(try again.read() >= start + 2)
    }

    @Test func survivesASwtpmRestartOnTheSameState() throws {
        let tpm = try SoftwareTPM()
        let index = try TPMNVCounter.index(slot: 0)
        var value: UInt64
        do {
            let context = try TPMContext(tcti: tpm.tcti)
            let anchor = try TPMCounterAnchor(context: context, index: index)
            value = try anchor.advance()
            value = try anchor.advance()
            #expect(try anchor.current() == value)
        }
        try tpm.restart()
        let context = try TPMContext(tcti: tpm.tcti)
        let anchor = try TPMCounterAnchor(context: context, index: index, create: false)
        #expect(try anchor.current() == value)
        #expect(try anchor.advance() == value + 1)
    }

    @Test func anchorIsNotCreatedWhenAskedNotTo() throws {
        let tpm = try SoftwareTPM()
        let context = try TPMContext(tcti: tpm.tcti)
        let index = try TPMNVCounter.index(slot: 9)
        #expect(throws: TPMError.nvIndexUndefined(index)) {
            try TPMCounterAnchor(context: context, index: index, create: false)
        }
    }

    @Test func pinnedPrimaryKeyIsChecked() throws {
        let tpm = try SoftwareTPM()
        let context = try TPMContext(tcti: tpm.tcti)
        let name = try TPMPrimaryKey(context: context).name
        let index = try TPMNVCounter.index(slot: 1)
        let anchor = try TPMCounterAnchor(context: context, index: index, primaryName: name)
        #expect(try anchor.advance() == anchor.current())
        var wrong = name
        wrong[wrong.count - 1] ^= 1
        let impostor = try TPMNVCounter.open(context: context, index: index, primaryName: wrong)
        #expect(throws: TPMError.primaryKeyMismatch(expected: wrong, found: name)) { try impostor.read() }
    }

    @Test func refusesIndicesOutsideTheNVRange() {
        #expect(throws: TPMError.self) { try TPMNVCounter.index(slot: 0, base: 0x8100_0000) }
        #expect(throws: TPMError.self) { try TPMNVCounter.index(slot: 0x00FF_FFFF, base: 0x0150_0000) }
    }
}
