import BlockDevice
import NBDClient
import TestSupport
import Testing

@testable import CryptPool

/// A crypt pool over hostile storage, set up while the storage is still
/// honest: formatted, one volume "vm" with `written` blocks written (the
/// first third twice), flushed, and the trust anchor in its own directory.
final class HostileSetup {
    static let volumeSize: UInt64 = 2 << 20
    let storage: HostileStorage
    let remote: RemoteBlockDevice
    let anchorDirectory: TemporaryDirectory
    let anchor: FileTrustAnchor
    let pool: Pool
    let consumer: Consumer
    /// Blocks written before the scenario starts.
    let written: UInt64

    init(
        written: UInt64 = 48, seed: UInt64 = 1, checkpointRecords: Int = 64, requestTimeout: Double = 1,
        retryWindow: Double = 2, storageSize: UInt64 = 16 << 20
    ) throws {
        storage = try HostileStorage(size: storageSize, seed: seed)
        remote = try storage.connect(requestTimeout: requestTimeout, retryWindow: retryWindow)
        anchorDirectory = try TemporaryDirectory("anchor")
        anchor = try FileTrustAnchor(directory: anchorDirectory.path)
        pool = try Pool.format(
            storage: remote, passphrase: testPassphrase, cost: testCost, anchor: anchor,
            configuration: PoolConfiguration(checkpointRecords: checkpointRecords)
        ).pool
        try pool.createVolume(name: "vm", size: Self.volumeSize)
        consumer = Consumer(volume: try pool.volume(named: "vm"))
        self.written = written
        for block in 0..<written { try consumer.write(block, seed: seed * 100_000 + block + 1) }
        try consumer.flush()
        // Overwrite a third, so that freed blocks get reused and blocks have history.
        for block in 0..<(written / 3) { try consumer.write(block, seed: seed * 100_000 + 50_000 + block) }
        try consumer.flush()
        storage.device.resetCounters()
    }

    /// Every block of the volume the scenarios read: the written ones and
    /// as many never written (which read as zeroes without touching storage).
    var blocksToRead: Range<UInt64> { 0..<(written + 16) }

    /// Opens the pool again over a new connection, as a restarted crypt
    /// domain would, with `anchor` (the setup's own unless given).
    func reopen(
        anchor: (any TrustAnchor)? = nil, retryWindow: Double = 2, configuration: PoolConfiguration = PoolConfiguration()
    ) -> Result<Pool, any Error> {
        Result {
            let remote = try storage.connect(retryWindow: retryWindow)
            return try Pool.open(
                storage: remote, secret: .passphrase(testPassphrase), anchor: anchor ?? self.anchor, configuration: configuration)
        }
    }

    /// A consumer of the reopened pool that judges reads by what this
    /// setup's consumer wrote and flushed.
    func consumer(of pool: Pool) throws -> Consumer {
        consumer.volume = try pool.volume(named: "vm")
        return consumer
    }

    deinit { storage.stop() }
}

extension Result where Failure == any Error {
    /// The pool error a refused open threw, if it was one.
    var poolError: PoolError? {
        if case .failure(let error) = self { return error as? PoolError }
        return nil
    }

    var succeeded: Bool {
        if case .success = self { return true }
        return false
    }
}

extension PoolError {
    var isRollback: Bool {
        if case .rolledBack = self { return true }
        return false
    }
}
