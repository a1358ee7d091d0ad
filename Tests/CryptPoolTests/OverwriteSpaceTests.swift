import BlockDevice
import Foundation
import Keys
import PoolFormat
import Testing

@testable import CryptPool

/// Overwriting blocks a volume already holds must not fail for lack of
/// space while the pool has room for the volume.
///
/// Found by bench/chain (bench/CHAIN.md): copy-on-write keeps every block
/// overwritten since the last commit allocated until the next commit, and
/// nothing commits until the consumer sends FLUSH (docs/format.md, section 7
/// promised a commit timer; there was none), so an overwrite burst without
/// FLUSH gets ENOSPC once it exceeds the pool's free space, although the
/// volume is fully provisioned. A commit on allocation failure (and retry)
/// would reclaim the overwritten blocks.
@Suite struct OverwriteSpaceTests {
    @Test func overwritingAFullVolumeWithoutFlushDoesNotRunOutOfSpace() throws {
        // A 16 MiB volume (4,096 blocks) in a 24 MiB pool: about 1,900 blocks spare.
        let device = try MemoryBlockDevice(size: 24 << 20)
        let formatted = try Pool.format(storage: device, passphrase: passphrase, cost: testCost, anchor: nil)
        try formatted.pool.createVolume(name: "v", size: 16 << 20)
        let volume = try formatted.pool.volume(named: "v")
        let chunk = randomBytes(1 << 20, seed: 11)
        for offset in stride(from: UInt64(0), to: 16 << 20, by: 1 << 20) { try write(volume, offset, chunk) }
        try volume.flush()
        let spare = formatted.pool.freeBlocks
        #expect(spare > 1000, "the pool should have room to spare, has \(spare) free blocks")

        var failure: (any Error)?
        for offset in stride(from: UInt64(0), to: 16 << 20, by: 1 << 20) where failure == nil {
            do { try write(volume, offset, chunk) } catch { failure = error }
        }
        #expect(failure == nil, "overwriting the volume failed with \(spare) blocks free before: \(String(describing: failure))")
    }
}
