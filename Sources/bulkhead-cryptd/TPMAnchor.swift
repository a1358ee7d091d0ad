import CryptPool
import Crypto
import Synchronization
import TPM

/// The TPM counter trust anchor (docs/format.md, section 9): a TPM NV
/// counter bound to the pool, defined at first use, that counts anchor
/// epochs. Keeps no generations; combine it with the file anchor for those.
final class TPMTrustAnchor: TrustAnchor {
    let context: TPMContext
    /// The NV index given on the command line; otherwise derived from the pool UUID.
    let fixedIndex: UInt32?
    private let bound = Mutex<(anchor: TPMCounterAnchor, firstUseReported: Bool)?>(nil)

    init(context: TPMContext, index: UInt32?) {
        self.context = context
        fixedIndex = index
    }

    /// The NV index of a pool's counter: the owner index range this layer
    /// uses plus 16 bits of SHA-256 of the pool UUID.
    static func index(for pool: [UInt8]) throws(TPMError) -> UInt32 {
        let digest = Array(SHA256.hash(data: pool))
        return try TPMNVCounter.index(slot: UInt32(digest[0]) << 8 | UInt32(digest[1]))
    }

    private func counter(pool: [UInt8]) throws(PoolError) -> (TPMCounterAnchor, firstUse: Bool) {
        if let found = bound.withLock({ state -> (TPMCounterAnchor, Bool)? in
            guard let current = state else { return nil }
            state = (current.anchor, true)
            return (current.anchor, false)
        }) {
            return found
        }
        do {
            let anchor = try TPMCounterAnchor(context: context, index: fixedIndex ?? Self.index(for: pool))
            bound.withLock { $0 = (anchor, true) }
            return (anchor, anchor.defined)
        } catch {
            throw .anchor("TPM counter: \(error)")
        }
    }

    func generation(pool: [UInt8]) throws(PoolError) -> UInt64? { nil }
    func record(pool: [UInt8], generation: UInt64) throws(PoolError) {}

    func epoch(pool: [UInt8]) throws(PoolError) -> AnchorEpoch? {
        let (anchor, firstUse) = try counter(pool: pool)
        do {
            return AnchorEpoch(value: try anchor.current(), firstUse: firstUse, name: "TPM NV counter 0x\(hex(anchor.counter.index))")
        } catch {
            throw .anchor("TPM counter: \(error)")
        }
    }

    /// Increments up to `epoch`, one step per NV write; a pool far ahead of
    /// its counter is not this pool's counter, and is refused.
    func advanceEpoch(pool: [UInt8], to epoch: UInt64) throws(PoolError) {
        let (anchor, _) = try counter(pool: pool)
        do {
            var value = try anchor.current()
            guard epoch <= value || epoch - value <= Self.maxCatchUp else {
                throw PoolError.anchor(
                    "the pool claims epoch \(epoch), TPM NV counter 0x\(hex(anchor.counter.index)) is at \(value): not this pool's counter")
            }
            while value < epoch { value = try anchor.advance() }
        } catch let error as PoolError {
            throw error
        } catch {
            throw .anchor("TPM counter: \(error)")
        }
    }

    /// Most increments one catch-up may take.
    static let maxCatchUp: UInt64 = 64
}

func hex(_ value: UInt32) -> String {
    let digits = String(value, radix: 16)
    return String(repeating: "0", count: max(0, 8 - digits.count)) + digits
}
