import Crypto
import Foundation
import Testing

@testable import Keys

/// scrypt through ScryptCost, against RFC 7914 section 12. ScryptCost
/// derives 32 bytes; scrypt's output is PBKDF2 over the mixed blocks, so a
/// 32-byte output is the first 32 bytes of the RFC's 64-byte one.
@Suite struct ScryptTests {
    /// RFC 7914 vector 2: "password", "NaCl", N = 1024, r = 8, p = 16.
    @Test func rfc7914Vector2() throws {
        let cost = ScryptCost(log2N: 10, r: 8, p: 16)
        #expect(cost.isWithinBounds)
        let key = try cost.derive(passphrase: Array("password".utf8), salt: Array("NaCl".utf8))
        #expect(hexString(keyBytes(key)) == "fdbabe1c9d3472007856e7190d01e9fe7c6ad7cbc8237830e77376634b373162")
    }

    /// RFC 7914 vector 3: "pleaseletmein", "SodiumChloride", N = 16384, r = 8, p = 1.
    @Test func rfc7914Vector3() throws {
        let cost = ScryptCost(log2N: 14)
        #expect(cost.isWithinBounds)
        let key = try cost.derive(passphrase: Array("pleaseletmein".utf8), salt: Array("SodiumChloride".utf8))
        #expect(hexString(keyBytes(key)) == "7023bdcb3afd7348461c06cd81fd38ebfda8fbba904f8e3ea9b543f6545da1f2")
    }

    /// RFC 7914 vector 1 (N = 16, r = 1, p = 1) is below the accepted bounds.
    @Test func vector1CostIsOutOfBounds() {
        #expect(!ScryptCost(log2N: 4, r: 1, p: 1).isWithinBounds)
    }

    @Test func bounds() {
        #expect(ScryptCost(log2N: 10).isWithinBounds)
        #expect(ScryptCost(log2N: 20).isWithinBounds)
        #expect(ScryptCost(log2N: 22, r: 1, p: 1).isWithinBounds)
        #expect(ScryptCost(log2N: 15, r: 1, p: 1).isWithinBounds)
        #expect(ScryptCost(log2N: 15, r: 32, p: 16).isWithinBounds)
        for cost in [
            ScryptCost(log2N: 9), ScryptCost(log2N: 23), ScryptCost(log2N: 21), ScryptCost(log2N: 22), ScryptCost(log2N: 0), ScryptCost(log2N: 64), ScryptCost(log2N: .max),
            ScryptCost(log2N: 15, r: 0), ScryptCost(log2N: 15, r: 33), ScryptCost(log2N: 15, r: .max),
            ScryptCost(log2N: 15, p: 0), ScryptCost(log2N: 15, p: 17), ScryptCost(log2N: 15, p: .max),
        ] {
            #expect(!cost.isWithinBounds, "\(cost)")
        }
    }

    @Test func deterministicAndSensitive() throws {
        let cost = ScryptCost(log2N: 10)
        let salt = [UInt8](repeating: 7, count: 32)
        let base = keyBytes(try cost.derive(passphrase: Array("hunter2".utf8), salt: salt))
        #expect(base.count == 32)
        #expect(keyBytes(try cost.derive(passphrase: Array("hunter2".utf8), salt: salt)) == base)
        var otherSalt = salt
        otherSalt[0] ^= 1
        let variants = [
            try cost.derive(passphrase: Array("hunter3".utf8), salt: salt),
            try cost.derive(passphrase: Array("hunter2 ".utf8), salt: salt),
            try cost.derive(passphrase: Array("hunter2".utf8), salt: otherSalt),
            try ScryptCost(log2N: 11).derive(passphrase: Array("hunter2".utf8), salt: salt),
            try ScryptCost(log2N: 10, r: 4).derive(passphrase: Array("hunter2".utf8), salt: salt),
            try ScryptCost(log2N: 10, p: 2).derive(passphrase: Array("hunter2".utf8), salt: salt),
        ].map(keyBytes)
        #expect(Set(variants + [base]).count == variants.count + 1)
    }

    @Test func tuneNeverGoesBelowTheFloor() {
        let cost = ScryptCost.tune(target: 0.001)
        #expect(cost.log2N >= ScryptCost.tunedFloorLog2N)
        #expect(cost.isWithinBounds)
    }

    /// The bounds exist so a corrupt or hostile keyslot cannot exhaust
    /// memory (their comment: "above 2^22 with r = 8 needs 4 GiB"). The
    /// keyslot and its digest in the header are read before the header
    /// HMAC can be checked, so the storage side chooses these parameters.
    /// scrypt needs 128 · r · N bytes; every accepted cost should stay
    /// within the 4 GiB the comment names.
    @Test func boundsCapMemoryAt4GiB() {
        var worst: (bytes: UInt64, cost: ScryptCost)?
        for log2N in ScryptCost.minimumLog2N...ScryptCost.maximumLog2N {
            for r in UInt32(1)...64 {
                let cost = ScryptCost(log2N: log2N, r: r, p: 1)
                guard cost.isWithinBounds else { continue }
                let bytes = 128 * UInt64(r) << UInt64(log2N)
                if bytes > worst?.bytes ?? 0 { worst = (bytes, cost) }
            }
        }
        let found = worst!
        #expect(
            found.bytes <= 4 << 30,
            "ScryptCost accepts N=2^\(found.cost.log2N) r=\(found.cost.r), which needs \(found.bytes >> 30) GiB")
    }
}
