import BlockDevice
import Keys
import PoolFormat

/// Where an authentication check failed, with what was expected and found
/// (after fs-verity's "FILE CORRUPTED!" message).
public struct IntegrityFailure: Sendable, Equatable, CustomStringConvertible {
    /// The volume, when the block belongs to one.
    public var volume: String?
    /// What the block is: "data", "volume tree node", "log block", ...
    public var structure: String
    /// The logical block (data) or first logical index covered (tree node).
    public var index: UInt64
    /// Tree level: 0 for data, 1 for the nodes that point at data, up to the root.
    public var level: Int
    public var physicalBlock: PhysicalBlock
    /// The tag the parent holds.
    public var expectedTag: String
    /// SHA-256 of the block the storage side returned.
    public var foundDigest: String

    public var description: String {
        let owner = volume.map { "volume \($0), " } ?? ""
        return "integrity failure: \(owner)\(structure) at index \(index), tree level \(level), physical block \(physicalBlock): "
            + "expected tag \(expectedTag), found a block with SHA-256 \(foundDigest)"
    }
}

/// Everything that can go wrong in the crypt pool.
public enum PoolError: Error, Sendable, Equatable, CustomStringConvertible {
    /// A block did not authenticate: tampering, corruption or a replayed block.
    case integrity(IntegrityFailure)
    /// An authenticated structure does not decode (a bug or a key compromise).
    case malformed(String)
    /// Not a Bulkhead pool, or one of an unknown version.
    case notAPool(String)
    /// No keyslot opened with the secret given.
    case unlockFailed([String])
    /// No superblock slot authenticates.
    case noValidSuperblock
    /// The pool is older than the trust anchor remembers.
    case rolledBack(pool: String, found: UInt64, anchor: UInt64)
    /// The pool's epoch is behind the epoch counter (a TPM NV counter).
    case rolledBackEpoch(pool: String, found: UInt64, counter: UInt64, anchor: String)
    /// The storage side failed.
    case storage(BlockDeviceError)
    /// The trust anchor could not be read or written.
    case anchor(String)
    case noSpace
    /// The records written beside a running checkpoint reached the bound:
    /// the write waits for the checkpoint's end and is tried again
    /// (`Pool.reclaimingSpace`); never reported to a consumer.
    case checkpointBehind
    case volumeExists(String)
    case noSuchVolume(String)
    case tooManyVolumes
    case invalidArgument(String)
    /// Administrative operations on keyslots.
    case keyslot(String)
    /// The storage domain lost data writes it had acknowledged (a restart
    /// behind a reconnect); the pool refuses everything until reopened.
    case writesLost(String)

    public var description: String {
        switch self {
        case .integrity(let failure): failure.description
        case .malformed(let what): "malformed pool structure: \(what)"
        case .notAPool(let why): "not a Bulkhead pool: \(why)"
        case .unlockFailed(let reasons):
            "no keyslot opened" + (reasons.isEmpty ? "" : ": " + reasons.joined(separator: "; "))
        case .noValidSuperblock: "no superblock slot authenticates: the pool is corrupt or was not written by this key"
        case .rolledBack(let pool, let found, let anchor):
            "pool \(pool) rolled back: newest valid superblock has generation \(found), the trust anchor remembers \(anchor)"
        case .rolledBackEpoch(let pool, let found, let counter, let anchor):
            "pool \(pool) rolled back: its newest valid superblock is from anchor epoch \(found), but \(anchor) counts epoch \(counter)"
                + " (the pool was restored to a state before the last counted epoch)"
        case .storage(let error): "storage: \(error)"
        case .anchor(let why): "trust anchor: \(why)"
        case .noSpace: "no free space left in the pool"
        case .checkpointBehind: "writes wait for the running checkpoint"
        case .volumeExists(let name): "a volume named \"\(name)\" already exists"
        case .noSuchVolume(let name): "no volume named \"\(name)\""
        case .tooManyVolumes: "the pool holds the maximum of \(PoolLayout.maxVolumeTableBlocks * PoolLayout.volumesPerTableBlock) volumes"
        case .invalidArgument(let why): why
        case .keyslot(let why): why
        case .writesLost(let what):
            "the storage domain lost \(what) it had acknowledged before a restart; "
                + "the pool stopped serving and must be opened again (its last commit is intact)"
        }
    }
}

func hex(_ bytes: some Sequence<UInt8>) -> String {
    bytes.map { String($0, radix: 16).count == 1 ? "0" + String($0, radix: 16) : String($0, radix: 16) }.joined()
}

func hex(_ tag: BlockTag) -> String { tag.withUnsafeBytes { hex($0) } }
