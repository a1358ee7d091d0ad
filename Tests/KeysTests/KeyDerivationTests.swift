import Crypto
import PoolFormat
import Testing

@testable import Keys

func keyBytes(_ key: SymmetricKey) -> [UInt8] { key.withUnsafeBytes { Array($0) } }

func masterKey(_ bytes: [UInt8]) -> MasterKey {
    var copy = bytes
    return MasterKey(secret: .taking(&copy))
}

func volumeKey(_ bytes: [UInt8]) -> VolumeKey {
    var copy = bytes
    return VolumeKey(secret: .taking(&copy))
}

/// HKDF-SHA256 (RFC 5869) and the pool key schedule of docs/format.md, section 2.
@Suite struct KeyDerivationTests {
    let master = (0..<32).map { UInt8($0) }
    let poolA = [UInt8](repeating: 0xA1, count: 16)
    let poolB = [UInt8](repeating: 0xB2, count: 16)
    let saltA = SessionSalt(bytes: [UInt8](repeating: 0x11, count: 16))
    let saltB = SessionSalt(bytes: [UInt8](repeating: 0x22, count: 16))
    let probe = [UInt8](repeating: 0x77, count: 64)

    @Test func rfc5869TestCase1() {
        let ikm = SymmetricKey(data: [UInt8](repeating: 0x0b, count: 22))
        let salt = bytes("000102030405060708090a0b0c")
        let info = bytes("f0f1f2f3f4f5f6f7f8f9")
        let prk = HKDF<SHA256>.extract(inputKeyMaterial: ikm, salt: salt)
        #expect(hexString(prk) == "077709362c2e32df0ddc3f0dc47bba6390b6c73bb50f9c3122ec844ad7c2b3e5")
        let okm = HKDF<SHA256>.deriveKey(inputKeyMaterial: ikm, salt: salt, info: info, outputByteCount: 42)
        #expect(hexString(keyBytes(okm)) == "3cb25f25faacd57a90434f64d0362f2a2d2d0a90cf1a5a4c5db02d56ecc4c5bf34007208d5b887185865")
    }

    @Test func rfc5869TestCase3EmptySaltAndInfo() {
        let ikm = SymmetricKey(data: [UInt8](repeating: 0x0b, count: 22))
        let okm = HKDF<SHA256>.deriveKey(inputKeyMaterial: ikm, salt: [UInt8](), info: [UInt8](), outputByteCount: 42)
        #expect(hexString(keyBytes(okm)) == "8da4e775a563c18f715f802a063c5a31b8a11f5c5ee1879ec3454e5f3c738d2d9d201395faa4b61a96c8")
    }

    /// K_sb = HKDF-SHA256(MK, salt = pool UUID, info = "bulkhead v1 superblock").
    @Test func superblockKeyFollowsTheSpec() {
        let keys = PoolKeys(master: masterKey(master), poolID: poolA)
        let expected = HKDF<SHA256>.deriveKey(
            inputKeyMaterial: SymmetricKey(data: master), salt: poolA, info: Array("bulkhead v1 superblock".utf8), outputByteCount: 32)
        #expect(keyBytes(keys.superblockMAC) == keyBytes(expected))
        #expect(keys.poolID == poolA)
    }

    /// K_meta,s = HKDF-SHA256(MK, salt = S_s, info = "bulkhead v1 metadata" ‖ pool UUID).
    @Test func metadataKeyFollowsTheSpec() {
        let keys = PoolKeys(master: masterKey(master), poolID: poolA)
        let expected = BlockSealer(
            key: HKDF<SHA256>.deriveKey(
                inputKeyMaterial: SymmetricKey(data: master), salt: saltA.bytes, info: Array("bulkhead v1 metadata".utf8) + poolA,
                outputByteCount: 32))
        let counter = NonceCounter(rawValue: 3)
        #expect(keys.metadataKey(salt: saltA).seal(probe, counter: counter, associatedData: []) == expected.seal(probe, counter: counter, associatedData: []))
    }

    /// K_data,v,s = HKDF-SHA256(VK_v, salt = S_s, info = "bulkhead v1 data" ‖ pool UUID ‖ v as 4 little-endian bytes).
    @Test func dataKeyFollowsTheSpec() {
        let keys = PoolKeys(master: masterKey(master), poolID: poolA)
        let volume = [UInt8](repeating: 0x5C, count: 32)
        let expected = BlockSealer(
            key: HKDF<SHA256>.deriveKey(
                inputKeyMaterial: SymmetricKey(data: volume), salt: saltA.bytes,
                info: Array("bulkhead v1 data".utf8) + poolA + [0x04, 0x03, 0x02, 0x01], outputByteCount: 32))
        let sealer = keys.dataKey(volume: VolumeID(rawValue: 0x0102_0304), volumeKey: volumeKey(volume), salt: saltA)
        let counter = NonceCounter(rawValue: 9)
        #expect(sealer.seal(probe, counter: counter, associatedData: []) == expected.seal(probe, counter: counter, associatedData: []))
    }

    func metadataSeal(_ master: [UInt8], _ pool: [UInt8], _ salt: SessionSalt) -> [UInt8] {
        let sealed = PoolKeys(master: masterKey(master), poolID: pool).metadataKey(salt: salt)
            .seal(probe, counter: NonceCounter(rawValue: 0), associatedData: [])
        return sealed.ciphertext + sealed.tag
    }

    func dataSeal(_ master: [UInt8], _ pool: [UInt8], _ volume: UInt32, _ key: [UInt8], _ salt: SessionSalt) -> [UInt8] {
        let sealed = PoolKeys(master: masterKey(master), poolID: pool)
            .dataKey(volume: VolumeID(rawValue: volume), volumeKey: volumeKey(key), salt: salt)
            .seal(probe, counter: NonceCounter(rawValue: 0), associatedData: [])
        return sealed.ciphertext + sealed.tag
    }

    @Test func deterministic() {
        #expect(
            keyBytes(PoolKeys(master: masterKey(master), poolID: poolA).superblockMAC)
                == keyBytes(PoolKeys(master: masterKey(master), poolID: poolA).superblockMAC))
        #expect(metadataSeal(master, poolA, saltA) == metadataSeal(master, poolA, saltA))
        let volume = [UInt8](repeating: 3, count: 32)
        #expect(dataSeal(master, poolA, 1, volume, saltA) == dataSeal(master, poolA, 1, volume, saltA))
    }

    @Test func separated() {
        var otherMaster = master
        otherMaster[0] ^= 1
        let superblockKeys = [
            PoolKeys(master: masterKey(master), poolID: poolA), PoolKeys(master: masterKey(master), poolID: poolB),
            PoolKeys(master: masterKey(otherMaster), poolID: poolA),
        ].map { keyBytes($0.superblockMAC) }
        #expect(Set(superblockKeys).count == 3)

        let volume = [UInt8](repeating: 3, count: 32)
        var otherVolume = volume
        otherVolume[31] ^= 0x80
        let seals = [
            metadataSeal(master, poolA, saltA), metadataSeal(master, poolB, saltA), metadataSeal(master, poolA, saltB),
            metadataSeal(otherMaster, poolA, saltA),
            dataSeal(master, poolA, 1, volume, saltA), dataSeal(master, poolB, 1, volume, saltA), dataSeal(master, poolA, 2, volume, saltA),
            dataSeal(master, poolA, 1, otherVolume, saltA), dataSeal(master, poolA, 1, volume, saltB),
            // The superblock MAC key used as a sealing key is yet another key.
            {
                let sealed = BlockSealer(key: PoolKeys(master: masterKey(master), poolID: poolA).superblockMAC)
                    .seal(probe, counter: NonceCounter(rawValue: 0), associatedData: [])
                return sealed.ciphertext + sealed.tag
            }(),
        ]
        #expect(Set(seals).count == seals.count)
        // The data key derives from the volume key alone, not from the master key.
        #expect(dataSeal(master, poolA, 1, volume, saltA) == dataSeal(otherMaster, poolA, 1, volume, saltA))
    }
}

@Suite struct HMACTests {
    /// RFC 4231 test case 2 for the primitive.
    @Test func rfc4231TestCase2() {
        let mac = HMAC<SHA256>.authenticationCode(for: Array("what do ya want for nothing?".utf8), using: SymmetricKey(data: Array("Jefe".utf8)))
        #expect(hexString(mac) == "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843")
    }

    @Test func macAndVerify() {
        let keys = PoolKeys(master: masterKey((0..<32).map { UInt8(255 - $0) }), poolID: [UInt8](repeating: 1, count: 16))
        let message = (0..<192).map { UInt8($0) }
        let mac = keys.mac(message)
        #expect(mac.count == 32)
        #expect(mac == Array(HMAC<SHA256>.authenticationCode(for: message, using: keys.superblockMAC)))
        #expect(keys.verifyMAC(mac, for: message))
        for index in 0..<32 {
            var wrong = mac
            wrong[index] ^= 0x01
            #expect(!keys.verifyMAC(wrong, for: message), "mac byte \(index)")
        }
        for index in [0, 100, 191] {
            var wrong = message
            wrong[index] ^= 0x40
            #expect(!keys.verifyMAC(mac, for: wrong), "message byte \(index)")
        }
        #expect(!keys.verifyMAC(Array(mac.prefix(31)), for: message))
        #expect(!keys.verifyMAC(Array(mac.prefix(16)), for: message))
        #expect(!keys.verifyMAC([], for: message))
        #expect(!keys.verifyMAC(mac + [0], for: message))
        #expect(!keys.verifyMAC(mac, for: message + [0]))
        let otherPool = PoolKeys(master: masterKey((0..<32).map { UInt8(255 - $0) }), poolID: [UInt8](repeating: 2, count: 16))
        #expect(!otherPool.verifyMAC(mac, for: message))
    }
}
