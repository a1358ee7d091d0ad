import BlockDevice
import Foundation
import Keys
import PoolFormat

@testable import CryptPool

/// A cheap scrypt cost, so that every unlock in these tests takes milliseconds.
let testCost = ScryptCost(log2N: 10)
let testPassphrase = Array("adversarial tests passphrase".utf8)
let blockSize = PoolLayout.blockSize

/// Deterministic pseudo-random bytes (a 64-bit LCG), so that any block's
/// expected contents can be rebuilt from its seed.
func seededBytes(_ count: Int, seed: UInt64) -> [UInt8] {
    var state = seed &* 0x9E37_79B9_7F4A_7C15 &+ 0x2545_F491_4F6C_DD1D
    var bytes = [UInt8](repeating: 0, count: count)
    for index in 0..<count {
        state = state &* 6_364_136_223_846_793_005 &+ 1_442_695_040_888_963_407
        bytes[index] = UInt8(truncatingIfNeeded: state >> 33)
    }
    return bytes
}

/// The contents of one 4 KiB block written with `seed`; seed 0 is zeroes.
func blockContents(seed: UInt64) -> [UInt8] {
    seed == 0 ? [UInt8](repeating: 0, count: blockSize) : seededBytes(blockSize, seed: seed)
}

extension BlockDevice {
    /// Reads `count` bytes at `offset`, throwing the device's error.
    func readBytes(at offset: UInt64, count: Int) throws(BlockDeviceError) -> [UInt8] {
        var bytes = [UInt8](repeating: 0xA5, count: count)
        var failure: BlockDeviceError?
        bytes.withUnsafeMutableBytes { buffer in
            do throws(BlockDeviceError) { try read(at: offset, into: buffer) } catch { failure = error }
        }
        if let failure { throw failure }
        return bytes
    }

    /// Writes `bytes` at `offset`, throwing the device's error.
    func writeBytes(at offset: UInt64, _ bytes: [UInt8], fua: Bool = false) throws(BlockDeviceError) {
        var failure: BlockDeviceError?
        bytes.withUnsafeBytes { buffer in
            do throws(BlockDeviceError) { try write(at: offset, from: buffer, fua: fua) } catch { failure = error }
        }
        if let failure { throw failure }
    }
}

/// A trust anchor held in memory: what the crypt domain's state directory
/// would say, set explicitly by crash-point replay.
final class MemoryTrustAnchor: TrustAnchor, @unchecked Sendable {
    // SAFETY of @unchecked: `value` is only touched under `lock`.
    private let lock = NSLock()
    private var value: UInt64?

    init(generation: UInt64? = nil) { value = generation }

    var recorded: UInt64? { lock.withLock { value } }

    func generation(pool: [UInt8]) throws(PoolError) -> UInt64? { lock.withLock { value } }

    func record(pool: [UInt8], generation: UInt64) throws(PoolError) {
        lock.withLock { value = max(value ?? 0, generation) }
    }
}

/// Whether the machine this runs on is CI, where a missing tool must fail.
var isCI: Bool { ProcessInfo.processInfo.environment["CI"] == "true" }

/// The package root (the directory holding Package.swift).
let packageRoot: String = {
    var url = URL(fileURLWithPath: #filePath)
    while url.path != "/" {
        url.deleteLastPathComponent()
        if FileManager.default.fileExists(atPath: url.appendingPathComponent("Package.swift").path) { return url.path }
    }
    return FileManager.default.currentDirectoryPath
}()
