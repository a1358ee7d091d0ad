import Testing

@testable import Keys

@Suite struct RecoveryKeyTests {
    static let alphabet = Set("0123456789ABCDEFGHJKMNPQRSTVWXYZ")

    func key(_ bytes: [UInt8]) -> RecoveryKey {
        var copy = bytes
        return RecoveryKey(secret: .taking(&copy))
    }

    func secret(_ key: RecoveryKey) -> [UInt8] { key.secret.withUnsafeBytes { Array($0) } }

    /// A fixed key whose printed form has both a 0 and a 1 in it.
    let fixed = (0..<32).map { UInt8(truncatingIfNeeded: $0 &* 37 &+ 1) }

    @Test func formatShape() {
        for _ in 0..<20 {
            let text = RecoveryKey.generate().formatted()
            let groups = text.split(separator: "-", omittingEmptySubsequences: false)
            #expect(groups.count == 14)
            #expect(groups.allSatisfy { $0.count == 4 })
            #expect(text.filter { $0 != "-" }.allSatisfy { Self.alphabet.contains($0) })
        }
    }

    @Test func knownEncodings() {
        let zeroes = key([UInt8](repeating: 0, count: 32)).formatted()
        #expect(zeroes.hasPrefix(String(repeating: "0000-", count: 13)))
        let ones = key([UInt8](repeating: 0xFF, count: 32)).formatted().filter { $0 != "-" }
        // 256 one bits: 51 characters of 31 (Z), then the last bit padded: 10000 = 16 (G).
        #expect(ones.prefix(52) == String(repeating: "Z", count: 51) + "G")
    }

    @Test func roundTrip() throws {
        for _ in 0..<50 {
            let original = RecoveryKey.generate()
            #expect(secret(try RecoveryKey(parsing: original.formatted())) == secret(original))
        }
        #expect(secret(try RecoveryKey(parsing: key(fixed).formatted())) == fixed)
        #expect(secret(try RecoveryKey(parsing: key([UInt8](repeating: 0xFF, count: 32)).formatted())) == [UInt8](repeating: 0xFF, count: 32))
    }

    @Test func forgivingInput() throws {
        let text = key(fixed).formatted()
        #expect(text.contains("0") && text.contains("1"), "the fixed key should exercise both substitutions: \(text)")
        var alternate = false
        let substituted = String(
            text.map { character -> Character in
                switch character {
                case "0": return "O"
                case "1":
                    alternate.toggle()
                    return alternate ? "I" : "L"
                default: return character
                }
            })
        let variants = [
            text.lowercased(),
            substituted,
            substituted.lowercased(),
            text.replacingOccurrences(of: "-", with: " "),
            text.replacingOccurrences(of: "-", with: ""),
            "  " + text.replacingOccurrences(of: "-", with: " - ") + " ",
        ]
        for variant in variants {
            #expect(secret(try RecoveryKey(parsing: variant)) == fixed, "\(variant)")
        }
    }

    @Test func typoCaughtByCheckGroup() {
        let text = Array(key(fixed).formatted())
        let letters = Array("0123456789ABCDEFGHJKMNPQRSTVWXYZ")
        // One wrong character at every data and check position.
        for position in text.indices where text[position] != "-" {
            var typo = text
            typo[position] = letters[(letters.firstIndex(of: text[position])! + 1) % letters.count]
            #expect(throws: RecoveryKey.ParseError.checkMismatch, "position \(position)") { try RecoveryKey(parsing: String(typo)) }
        }
        // Two neighbouring characters swapped.
        var swapped = text
        let first = text.indices.first { $0 + 1 < text.count && text[$0] != "-" && text[$0 + 1] != "-" && text[$0] != text[$0 + 1] }!
        swapped.swapAt(first, first + 1)
        #expect(throws: RecoveryKey.ParseError.checkMismatch) { try RecoveryKey(parsing: String(swapped)) }
    }

    @Test func wrongLength() {
        let text = key(fixed).formatted()
        #expect(throws: RecoveryKey.ParseError.wrongLength(55)) { try RecoveryKey(parsing: String(text.dropLast())) }
        #expect(throws: RecoveryKey.ParseError.wrongLength(57)) { try RecoveryKey(parsing: text + "0") }
        #expect(throws: RecoveryKey.ParseError.wrongLength(52)) { try RecoveryKey(parsing: String(text.prefix(64))) }
        #expect(throws: RecoveryKey.ParseError.wrongLength(0)) { try RecoveryKey(parsing: "") }
        #expect(throws: RecoveryKey.ParseError.wrongLength(0)) { try RecoveryKey(parsing: " - - ") }
    }

    @Test func invalidCharacters() {
        let text = key(fixed).formatted()
        #expect(throws: RecoveryKey.ParseError.invalidCharacter("U")) { try RecoveryKey(parsing: "u" + text.dropFirst()) }
        #expect(throws: RecoveryKey.ParseError.invalidCharacter("_")) { try RecoveryKey(parsing: text.replacingOccurrences(of: "-", with: "_")) }
        #expect(throws: RecoveryKey.ParseError.self) { try RecoveryKey(parsing: "é" + text.dropFirst()) }
    }

    @Test func errorsSayWhat() {
        #expect(RecoveryKey.ParseError.checkMismatch.description.contains("typo"))
        #expect(RecoveryKey.ParseError.wrongLength(3).description.contains("56"))
    }
}
