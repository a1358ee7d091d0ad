import Foundation
import PoolFormat
import Testing

@testable import Keys

@Suite struct KeyslotSealerTests {
    static let cost = ScryptCost(log2N: 10)
    let masterBytes = (0..<32).map { UInt8($0 ^ 0x5A) }
    let poolID = [UInt8](repeating: 0xC3, count: 16)
    let passphrase = Array("correct horse battery staple".utf8)

    func sealedPassphraseSlot(slot: UInt32 = 0) throws -> KeyslotBlock {
        try KeyslotSealer.seal(masterKey(masterBytes), into: slot, secret: .passphrase(passphrase), cost: Self.cost, poolID: poolID)
    }

    func opened(_ master: MasterKey) -> [UInt8] { master.secret.withUnsafeBytes { Array($0) } }

    @Test func passphraseRoundTrip() throws {
        let block = try sealedPassphraseSlot(slot: 4)
        #expect(block.type == .passphrase)
        #expect(block.slot == 4)
        #expect(block.kdfLog2N == 10 && block.kdfR == 8 && block.kdfP == 1)
        #expect(block.sealedKey != masterBytes)
        let decoded = try #require(try KeyslotBlock.decode(block.encoded()))
        #expect(opened(try KeyslotSealer.open(decoded, secret: .passphrase(passphrase), poolID: poolID)) == masterBytes)
    }

    @Test func recoveryRoundTrip() throws {
        let recovery = RecoveryKey.generate()
        let block = try KeyslotSealer.seal(masterKey(masterBytes), into: 1, secret: .recovery(recovery), poolID: poolID)
        #expect(block.type == .recovery)
        let typed = try RecoveryKey(parsing: recovery.formatted().lowercased())
        #expect(opened(try KeyslotSealer.open(block, secret: .recovery(typed), poolID: poolID)) == masterBytes)
        #expect(throws: KeyslotError.doesNotOpen(slot: 1)) {
            try KeyslotSealer.open(block, secret: .recovery(RecoveryKey.generate()), poolID: poolID)
        }
    }

    @Test func sealingTwiceUsesFreshSaltAndNonce() throws {
        let first = try sealedPassphraseSlot()
        let second = try sealedPassphraseSlot()
        #expect(first.salt != second.salt)
        #expect(first.nonce != second.nonce)
        #expect(first.sealedKey != second.sealedKey)
    }

    @Test func wrongPassphraseDoesNotOpen() throws {
        let block = try sealedPassphraseSlot(slot: 2)
        for wrong in ["", "correct horse battery stapl", "Correct horse battery staple", "correct horse battery staple "] {
            #expect(throws: KeyslotError.doesNotOpen(slot: 2)) { try KeyslotSealer.open(block, secret: .passphrase(Array(wrong.utf8)), poolID: poolID) }
        }
    }

    @Test func wrongSecretType() throws {
        let block = try sealedPassphraseSlot(slot: 3)
        #expect(throws: KeyslotError.wrongSecretType(slot: 3, type: .passphrase)) {
            try KeyslotSealer.open(block, secret: .recovery(RecoveryKey.generate()), poolID: poolID)
        }
    }

    @Test func movedToAnotherPoolDoesNotOpen() throws {
        let block = try sealedPassphraseSlot()
        for index in 0..<16 {
            var other = poolID
            other[index] ^= 0x01
            #expect(throws: KeyslotError.doesNotOpen(slot: 0)) { try KeyslotSealer.open(block, secret: .passphrase(passphrase), poolID: other) }
        }
    }

    /// Moving a keyslot to another slot index changes its parameters, which are authenticated.
    @Test func movedToAnotherSlotDoesNotOpen() throws {
        var block = try sealedPassphraseSlot(slot: 0)
        block.slot = 1
        #expect(throws: KeyslotError.doesNotOpen(slot: 1)) { try KeyslotSealer.open(block, secret: .passphrase(passphrase), poolID: poolID) }
    }

    /// What one flipped bit at `offset` of an encoded keyslot leads to.
    enum FlipOutcome: Equatable {
        case undecodable, refused, opened
    }

    func flip(_ block: KeyslotBlock, at offset: Int, secret: KeyslotSecret) -> FlipOutcome {
        var bytes = block.encoded()
        bytes[offset] ^= 1 << (offset % 8)
        guard let decoded = try? KeyslotBlock.decode(bytes) else { return .undecodable }
        guard let master = try? KeyslotSealer.open(decoded, secret: secret, poolID: poolID) else { return .refused }
        // A flip that still opens must yield the right key, never another one.
        #expect(opened(master) == masterBytes, "offset \(offset)")
        return .opened
    }

    /// The bytes of a keyslot that carry its fields (magic to tag) are all
    /// bound: a flipped bit in any of them fails before or in the AEAD.
    @Test func flippedBitInAnyFieldByteFails() throws {
        let passphraseSlot = try sealedPassphraseSlot()
        let recovery = RecoveryKey.generate()
        let recoverySlot = try KeyslotSealer.seal(masterKey(masterBytes), into: 1, secret: .recovery(recovery), poolID: poolID)
        let fieldBytes = Array(0..<49) + Array(52..<60) + Array(64..<124)
        for offset in fieldBytes {
            #expect(flip(passphraseSlot, at: offset, secret: .passphrase(passphrase)) != .opened, "passphrase slot, offset \(offset)")
            #expect(flip(recoverySlot, at: offset, secret: .recovery(recovery)) != .opened, "recovery slot, offset \(offset)")
        }
    }

    /// Regression: bytes outside the decoded fields (reserved bytes, the
    /// type-specific data) used to escape the seal's associated data.
    @Test func flippedBitOutsideTheFieldsIsDetectedByTheKeyslotAlone() throws {
        let recovery = RecoveryKey.generate()
        let block = try KeyslotSealer.seal(masterKey(masterBytes), into: 1, secret: .recovery(recovery), poolID: poolID)
        var undetected: [Int] = []
        for offset in 0..<PoolLayout.blockSize where flip(block, at: offset, secret: .recovery(recovery)) == .opened {
            undetected.append(offset)
        }
        #expect(undetected.isEmpty, "undetected flips at \(undetected.prefix(20))")
    }

    /// A corrupt or hostile keyslot cannot make unlock spend unbounded
    /// memory or time: its cost is checked before any derivation.
    @Test func outOfBoundsCostRefusedBeforeDeriving() throws {
        let base = try sealedPassphraseSlot(slot: 5)
        let hostile: [(UInt8, UInt32, UInt32)] = [
            (9, 8, 1), (23, 8, 1), (40, 8, 1), (63, 8, 1), (.max, 8, 1), (22, 33, 1), (22, .max, 1), (22, 8, 17), (22, 8, .max), (15, 0, 1),
            (15, 8, 0),
        ]
        for (log2N, r, p) in hostile {
            var block = base
            block.kdfLog2N = log2N
            block.kdfR = r
            block.kdfP = p
            let start = Date()
            #expect(throws: KeyslotError.costOutOfBounds(slot: 5, log2N: log2N, r: r, p: p)) {
                try KeyslotSealer.open(block, secret: .passphrase(passphrase), poolID: poolID)
            }
            // Deriving at N = 2^22 and above would take seconds and gigabytes.
            #expect(Date().timeIntervalSince(start) < 0.5, "N=2^\(log2N) r=\(r) p=\(p)")
        }
        // The same through the on-disk form.
        var bytes = base.encoded()
        bytes[48] = 30
        let decoded = try #require(try KeyslotBlock.decode(bytes))
        #expect(throws: KeyslotError.costOutOfBounds(slot: 5, log2N: 30, r: 8, p: 1)) {
            try KeyslotSealer.open(decoded, secret: .passphrase(passphrase), poolID: poolID)
        }
    }

    @Test func errorsSayWhat() {
        #expect(KeyslotError.doesNotOpen(slot: 3).description.contains("keyslot 3"))
        #expect(KeyslotError.costOutOfBounds(slot: 1, log2N: 40, r: 8, p: 1).description.contains("2^40"))
    }
}
