import BlockDevice
import Testing

@testable import CryptPool

/// A checkpoint empties the overlays it folds into the trees but keeps
/// their dictionaries' storage for the next records, within twice the
/// checkpoint record bound in all (PoolState.swift, `adoptCheckpointed`).
@Suite struct OverlayCapacityTests {
    static let records = 1024

    /// The overlay of `name`: its entries and its dictionary's capacity.
    func overlay(_ pool: Pool, _ name: String) throws -> (count: Int, capacity: Int, isEmpty: Bool) {
        let id = try #require(pool.volumes.first { $0.name == name }).id
        return try #require(pool.state.withLock { state in
            state.volumes[id].map { ($0.overlay.mapped.count, $0.overlay.mapped.capacity, $0.overlay.isEmpty) }
        })
    }

    @Test func checkpointKeepsTheOverlayStorageWithinTheBound() throws {
        let device = try MemoryBlockDevice(size: 64 << 20)
        let pool = try Pool.format(
            storage: device, passphrase: passphrase, cost: testCost, anchor: nil,
            configuration: PoolConfiguration(checkpointRecords: Self.records, commitInterval: 0)
        ).pool
        try pool.createVolume(name: "busy", size: 8 << 20)
        try pool.createVolume(name: "quiet", size: 8 << 20)
        let busy = try pool.volume(named: "busy")
        let quiet = try pool.volume(named: "quiet")
        let busyData = randomBytes(1000 * 4096, seed: 11)
        let quietData = randomBytes(700 * 4096, seed: 12)
        try write(busy, 0, busyData)
        try write(quiet, 0, quietData)
        let before = (busy: try overlay(pool, "busy"), quiet: try overlay(pool, "quiet"))
        #expect(before.busy.count == 1000 && before.quiet.count == 700)

        // 1,700 records reach the bound: this flush checkpoints.
        let generation = pool.generation
        try pool.flush()
        #expect(pool.generation > generation)
        let after = (busy: try overlay(pool, "busy"), quiet: try overlay(pool, "quiet"))
        #expect(after.busy.isEmpty && after.quiet.isEmpty, "the checkpoint folded the overlays into the trees")
        #expect(after.busy.capacity == before.busy.capacity, "the busiest overlay keeps its storage")
        #expect(after.busy.capacity + after.quiet.capacity <= 2 * Self.records, "storage kept past the bound")
        #expect(after.quiet.capacity == before.quiet.capacity || after.quiet.capacity == 0)

        // The kept storage serves the next records; everything reads back,
        // here and after a reopen.
        let again = randomBytes(300 * 4096, seed: 13)
        try write(busy, 100 * 4096, again)
        #expect(try overlay(pool, "busy").count == 300)
        #expect(try overlay(pool, "busy").capacity == before.busy.capacity, "the next records regrew the overlay")
        var expected = busyData
        expected.replaceSubrange((100 * 4096)..<(400 * 4096), with: again)
        #expect(try read(busy, 0, expected.count) == expected)
        #expect(try read(quiet, 0, quietData.count) == quietData)
        try pool.close()
        let reopened = try Pool.open(
            storage: device, secret: .passphrase(passphrase), anchor: nil, configuration: PoolConfiguration(commitInterval: 0))
        #expect(try read(reopened.volume(named: "busy"), 0, expected.count) == expected)
        #expect(try read(reopened.volume(named: "quiet"), 0, quietData.count) == quietData)
    }
}
