import Crypto
import PoolFormat

/// The pool master key: 32 random bytes that exist in the clear only in
/// the crypt domain. Every other key derives from it.
public struct MasterKey: Sendable {
    public let secret: SecretBytes
    public static let length = 32

    public init(secret: SecretBytes) {
        precondition(secret.count == Self.length)
        self.secret = secret
    }

    public static func generate() -> MasterKey { MasterKey(secret: .random(count: length)) }

    var symmetricKey: SymmetricKey { secret.withUnsafeBytes { SymmetricKey(data: $0) } }
}

/// A volume's data key: 32 random bytes kept in the sealed volume table.
public struct VolumeKey: Sendable {
    public let secret: SecretBytes
    public static let length = 32

    public init(secret: SecretBytes) {
        precondition(secret.count == Self.length)
        self.secret = secret
    }

    public static func generate() -> VolumeKey { VolumeKey(secret: .random(count: length)) }
}
