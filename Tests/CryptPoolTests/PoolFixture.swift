import BlockDevice

@testable import CryptPool

/// A pool formatted with the test passphrase and cost on a fresh memory
/// device of `storageSize` bytes, holding one volume "v" of `volumeSize`.
func poolWithVolume(
    storageSize: UInt64 = 256 << 20, volumeSize: UInt64 = 128 << 20, configuration: PoolConfiguration = PoolConfiguration()
) throws -> (device: MemoryBlockDevice, pool: Pool, volume: Volume) {
    let device = try MemoryBlockDevice(size: storageSize)
    let pool = try Pool.format(
        storage: device, passphrase: passphrase, cost: testCost, anchor: nil, configuration: configuration
    ).pool
    try pool.createVolume(name: "v", size: volumeSize)
    return (device, pool, try pool.volume(named: "v"))
}
