import Keys
import PoolFormat

/// Places and nonce counters for the tree nodes a checkpoint writes, taken
/// from the pool's state `batch` at a time. A checkpoint after random
/// writes rewrites every leaf of a volume (4,096 for 1 GiB) beside the
/// data path, which takes the same state lock about three times a write;
/// the checkpoint took it twice per node, once for a place and once for a
/// counter, and now twice per `batch` nodes (`bench/CHAIN.md`, session 16).
///
/// Places reserved and not used go back with `finish`; counters reserved
/// and not used are skipped, which is safe: a counter is never used twice,
/// and reserving advances the session's counter past them.
struct NodeReserve {
    /// Places and counters taken per trip through the state lock.
    static let batch = 64

    /// Every place taken from the space map, used or not.
    private(set) var taken: [PhysicalBlock] = []
    private var used = 0
    private var counters: (salt: SessionSalt, sealer: BlockSealer, next: UInt64, end: UInt64)?

    /// A place for the next node.
    mutating func place(from pool: Pool) throws(PoolError) -> PhysicalBlock {
        if used == taken.count {
            // Fewer than a batch if that is all the pool has left.
            let places = pool.state.withLock { state in
                state.space.allocate(Swift.min(Self.batch, Int(clamping: state.space.freeCount))) ?? []
            }
            guard !places.isEmpty else { throw .noSpace }
            taken += places
        }
        used += 1
        return taken[used - 1]
    }

    /// The session salt, counter and sealer for the next node.
    mutating func counter(from pool: Pool) -> (SessionSalt, NonceCounter, BlockSealer) {
        if let current = counters, current.next < current.end {
            counters!.next += 1
            return (current.salt, NonceCounter(rawValue: current.next), current.sealer)
        }
        let (salt, first, sealer) = pool.state.withLock { state in
            let (salt, first) = pool.reserveMetadataCounters(Self.batch, in: &state)
            return (salt, first, pool.metadataSealer(salt, in: &state))
        }
        counters = (salt, sealer, first + 1, first + UInt64(Self.batch))
        return (salt, NonceCounter(rawValue: first), sealer)
    }

    /// Gives the places not used back to the space map, and returns those
    /// used; the reserve is empty afterwards.
    mutating func finish(pool: Pool) -> [PhysicalBlock] {
        let spare = taken[used...]
        if !spare.isEmpty { pool.state.withLock { state in for block in spare { state.space.release(block) } } }
        let placed = Array(taken[..<used])
        taken = []
        used = 0
        return placed
    }
}
