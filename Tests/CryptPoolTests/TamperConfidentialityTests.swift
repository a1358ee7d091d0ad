import Foundation
import Keys
import PoolFormat
import Testing

@testable import CryptPool

/// What the storage side sees: after recognisable plaintext is written and
/// committed (in the log, then in the trees), the raw image holds no
/// 16-byte window of it, nor the passphrase, nor any key.
@Suite struct TamperConfidentialityTests {
    static let pattern = Array("BULKHEAD-PLAINTEXT".utf8)
    static let volumeName = "confidential-volume-name-7f3a9c"

    /// Every 16-byte window of the repeated pattern (one per rotation).
    static let windows: [[UInt8]] = (0..<pattern.count).map { start in
        (0..<16).map { pattern[(start + $0) % pattern.count] }
    }

    func checkImage(_ rig: TamperRig, stage: String) throws {
        let image = rig.device.snapshot()
        for window in Self.windows {
            #expect(!contains(image, window), "\(stage): plaintext window \(String(decoding: window, as: UTF8.self))")
        }
        #expect(!contains(image, passphrase), "\(stage): passphrase")
        #expect(!contains(image, Array(passphrase.prefix(12))), "\(stage): passphrase prefix")
        let master = rig.pool.master.secret.withUnsafeBytes { Array($0) }
        #expect(!contains(image, master), "\(stage): master key")
        #expect(!contains(image, Array(master.prefix(16))) && !contains(image, Array(master.suffix(16))), "\(stage): half the master key")
        let volumeKeys = rig.pool.state.withLock { $0.volumes.values.map { $0.key.secret.withUnsafeBytes { Array($0) } } }
        #expect(volumeKeys.count == 2)
        for key in volumeKeys {
            #expect(!contains(image, key), "\(stage): a volume key")
            #expect(!contains(image, Array(key.prefix(16))), "\(stage): half a volume key")
        }
        let recovery = rig.recoveryKey.secret.withUnsafeBytes { Array($0) }
        #expect(!contains(image, recovery), "\(stage): recovery secret")
        #expect(!contains(image, Array(rig.recoveryKey.formatted().utf8)), "\(stage): printed recovery key")
        #expect(!contains(image, Array(Self.volumeName.utf8)), "\(stage): volume name")
    }

    @Test func imageHoldsNoPlaintextPassphraseOrKeys() throws {
        let rig = try TamperRig(size: 32 << 20, useAnchor: true)
        try rig.pool.createVolume(name: Self.volumeName, size: 8 << 20)
        try rig.pool.createVolume(name: "second", size: 4 << 20)
        let plaintext = (0..<(1 << 20)).map { Self.pattern[$0 % Self.pattern.count] }
        let volume = try rig.pool.volume(named: Self.volumeName)
        try write(volume, 0, plaintext)
        // Also unaligned, so read-modify-write paths seal too.
        try write(volume, (2 << 20) + 1000, Array(plaintext.prefix(10_000)))
        try write(rig.pool.volume(named: "second"), 4096 * 3, Array(plaintext.prefix(8192)))
        try volume.flush()
        // The pattern really is what the volume holds.
        #expect(try read(volume, 0, plaintext.count) == plaintext)
        // Sanity: the search finds the pattern where it exists.
        #expect(contains(plaintext, Self.windows[5]))
        try checkImage(rig, stage: "after commit")

        // Fold the log into the trees and the volume table.
        try rig.pool.gate.withExclusive { () throws(PoolError) in try rig.pool.checkpoint() }
        try checkImage(rig, stage: "after checkpoint")

        // And after reopening (a new session) and writing again.
        let reopened = try rig.reopen()
        try write(reopened.volume(named: Self.volumeName), 4 << 20, Array(plaintext.prefix(256 << 10)))
        try reopened.flush()
        try checkImage(rig, stage: "after reopen")
    }
}
