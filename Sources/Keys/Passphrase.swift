import Crypto
import CryptoExtras
import Foundation

/// scrypt cost parameters for a passphrase keyslot.
public struct ScryptCost: Sendable, Hashable {
    public var log2N: UInt8
    public var r: UInt32
    public var p: UInt32

    public init(log2N: UInt8, r: UInt32 = 8, p: UInt32 = 1) {
        self.log2N = log2N
        self.r = r
        self.p = p
    }

    /// Bounds accepted when reading a keyslot: below 2^10 is no protection,
    /// above 2^22 with r = 8 needs 4 GiB and would let a corrupt slot
    /// exhaust memory.
    public static let minimumLog2N: UInt8 = 10
    public static let maximumLog2N: UInt8 = 22
    /// The floor `tune` never goes under, after OWASP's scrypt minimum.
    public static let tunedFloorLog2N: UInt8 = 15

    /// The most memory a keyslot may make unlock use (128 · r · N bytes):
    /// the storage side writes these parameters, and unlock runs before
    /// anything authenticates them.
    public static let maximumMemory: UInt64 = 1 << 30
    /// The most work a keyslot may ask for (p · r · N block mixes): the
    /// tuned default is at most 2^23.
    public static let maximumWork: UInt64 = 1 << 25

    public var isWithinBounds: Bool {
        guard (Self.minimumLog2N...Self.maximumLog2N).contains(log2N), (1...32).contains(r), (1...16).contains(p) else {
            return false
        }
        let n = UInt64(1) << UInt64(log2N)
        return 128 * UInt64(r) * n <= Self.maximumMemory && UInt64(p) * UInt64(r) * n <= Self.maximumWork
    }

    /// Picks the largest N whose derivation takes at most `target` seconds
    /// on this machine, never below 2^15, like cryptsetup's benchmark.
    public static func tune(target: Double = 1.0) -> ScryptCost {
        var cost = ScryptCost(log2N: 14)
        let start = Date()
        _ = try? cost.derive(passphrase: Array("benchmark".utf8), salt: [UInt8](repeating: 0, count: 32))
        let elapsed = max(Date().timeIntervalSince(start), 1e-4)
        // Each doubling of N doubles the time.
        while cost.log2N < 20, elapsed * Double(1 << Int(cost.log2N - 13)) <= target { cost.log2N += 1 }
        cost.log2N = max(cost.log2N, tunedFloorLog2N)
        return cost
    }

    /// Derives a 32-byte wrapping key.
    public func derive(passphrase: [UInt8], salt: [UInt8]) throws -> SymmetricKey {
        try KDF.Scrypt.deriveKey(
            from: passphrase, salt: salt, outputByteCount: 32, rounds: 1 << Int(log2N), blockSize: Int(r),
            parallelism: Int(p), maxMemory: 128 * Int(r) * (1 << Int(log2N)) * 2 + (1 << 20))
    }
}
