import Testing

@testable import Keys

@Suite struct SecretBytesTests {
    @Test func descriptionRedacts() {
        var bytes = Array("0123456789abcdef0123456789abcdef".utf8)
        let secret = SecretBytes.taking(&bytes)
        let shown = [String(describing: secret), String(reflecting: secret), "\(secret)"]
        for text in shown {
            #expect(text == "SecretBytes(32 bytes, redacted)")
            #expect(!text.contains("0123456789"))
        }
        let master = MasterKey(secret: secret)
        #expect(!String(describing: master).contains("0123456789"))
        #expect(String(describing: master).contains("redacted"))
        var recoveryBytes = [UInt8](repeating: 0, count: 32)
        let recovery = RecoveryKey(secret: .taking(&recoveryBytes))
        #expect(!String(describing: recovery).contains(recovery.formatted()))
        #expect(!String(describing: recovery).contains("0000-0000"))
    }

    @Test func takingZeroesTheSource() {
        var bytes = [UInt8](repeating: 0xA5, count: 48)
        let secret = SecretBytes.taking(&bytes)
        #expect(bytes == [UInt8](repeating: 0, count: 48))
        #expect(secret.count == 48)
        #expect(secret.withUnsafeBytes { Array($0) } == [UInt8](repeating: 0xA5, count: 48))
    }

    @Test func randomIsRandom() {
        let first = SecretBytes.random(count: 32).withUnsafeBytes { Array($0) }
        let second = SecretBytes.random(count: 32).withUnsafeBytes { Array($0) }
        #expect(first != second)
        #expect(first != [UInt8](repeating: 0, count: 32))
        #expect(SecretBytes.random(count: 5000).count == 5000)
    }
}
