import Crypto

/// A recovery key: 256 random bits shown once, at format time, as 13
/// groups of four Crockford base-32 characters and a check group, e.g.
/// `7Q2M-...-K3PD`. Typing is forgiving (case, O for 0, I and L for 1,
/// spaces or dashes) and a typo is caught by the check group before any
/// key derivation runs.
public struct RecoveryKey: Sendable {
    public let secret: SecretBytes
    static let alphabet = Array("0123456789ABCDEFGHJKMNPQRSTVWXYZ".utf8)
    static let dataCharacters = 52  // ceil(256 / 5)

    public init(secret: SecretBytes) {
        precondition(secret.count == 32)
        self.secret = secret
    }

    public static func generate() -> RecoveryKey { RecoveryKey(secret: .random(count: 32)) }

    /// The printable form. Only for showing to a person once.
    public func formatted() -> String {
        var characters = secret.withUnsafeBytes { Self.encode(Array($0)) }
        characters += Self.checkGroup(characters)
        var groups: [String] = []
        for start in stride(from: 0, to: characters.count, by: 4) {
            groups.append(String(decoding: characters[start..<min(start + 4, characters.count)], as: UTF8.self))
        }
        return groups.joined(separator: "-")
    }

    public enum ParseError: Error, Sendable, Equatable, CustomStringConvertible {
        case invalidCharacter(Character)
        case wrongLength(Int)
        case checkMismatch

        public var description: String {
            switch self {
            case .invalidCharacter(let character): "recovery key: '\(character)' is not a recovery key character"
            case .wrongLength(let count): "recovery key: \(count) characters, expected 56"
            case .checkMismatch: "recovery key: the check group does not match; look for a typo"
            }
        }
    }

    /// Parses what a person typed.
    public init(parsing text: String) throws(ParseError) {
        var characters: [UInt8] = []
        for character in text.uppercased() {
            if character == "-" || character == " " { continue }
            let mapped: Character =
                switch character {
                case "O": "0"
                case "I", "L": "1"
                default: character
                }
            guard let ascii = mapped.asciiValue, Self.alphabet.contains(ascii) else { throw .invalidCharacter(character) }
            characters.append(ascii)
        }
        guard characters.count == Self.dataCharacters + 4 else { throw .wrongLength(characters.count) }
        let data = Array(characters[0..<Self.dataCharacters])
        guard Self.checkGroup(data) == Array(characters[Self.dataCharacters...]) else { throw .checkMismatch }
        var bytes = Self.decode(data)
        self.secret = .taking(&bytes)
    }

    static func encode(_ bytes: [UInt8]) -> [UInt8] {
        var output: [UInt8] = []
        var buffer = 0
        var bits = 0
        for byte in bytes {
            buffer = (buffer << 8) | Int(byte)
            bits += 8
            while bits >= 5 {
                output.append(alphabet[(buffer >> (bits - 5)) & 31])
                bits -= 5
            }
            buffer &= (1 << bits) - 1
        }
        if bits > 0 { output.append(alphabet[(buffer << (5 - bits)) & 31]) }
        return output
    }

    static func decode(_ characters: [UInt8]) -> [UInt8] {
        var output: [UInt8] = []
        var buffer = 0
        var bits = 0
        for character in characters {
            buffer = (buffer << 5) | alphabet.firstIndex(of: character)!
            bits += 5
            if bits >= 8 {
                output.append(UInt8((buffer >> (bits - 8)) & 0xff))
                bits -= 8
            }
            buffer &= (1 << bits) - 1
        }
        return Array(output.prefix(32))
    }

    /// Four characters (20 bits) of SHA-256 over the data characters.
    static func checkGroup(_ characters: [UInt8]) -> [UInt8] {
        Array(encode(Array(SHA256.hash(data: characters))).prefix(4))
    }
}
