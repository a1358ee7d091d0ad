import Testing
import TestSupport
import Threads

/// Range locks: overlapping ranges of one key exclude each other, other
/// keys and disjoint ranges do not, and a release frees exactly its range.
@Suite struct RangeLocksTests {
    @Test func overlapsOfOneKeyExcludeEachOther() throws {
        let locks = RangeLocks()
        let first = try #require(locks.tryLock(key: 1, range: 10..<20))
        #expect(locks.tryLock(key: 1, range: 19..<21) == nil)
        #expect(locks.tryLock(key: 1, range: 0..<11) == nil)
        // Disjoint ranges of the same key, and any range of another key.
        let after = try #require(locks.tryLock(key: 1, range: 20..<30))
        let other = try #require(locks.tryLock(key: 2, range: 10..<20))
        locks.unlock(first)
        // Only the released range is free again.
        let again = try #require(locks.tryLock(key: 1, range: 10..<20))
        #expect(locks.tryLock(key: 1, range: 25..<26) == nil)
        #expect(locks.tryLock(key: 2, range: 15..<16) == nil)
        for ticket in [after, other, again] { locks.unlock(ticket) }
        #expect(locks.tryLock(key: 1, range: 0..<100) != nil)
    }

    @Test func releasingInAnyOrderFreesEachRange() throws {
        let locks = RangeLocks()
        var tickets = try (0..<64).map { try #require(locks.tryLock(key: 7, range: UInt64($0)..<UInt64($0 + 1))) }
        var generator = SystemRandomNumberGenerator()
        tickets.shuffle(using: &generator)
        for (released, ticket) in tickets.enumerated() {
            locks.unlock(ticket)
            // Exactly the ranges released so far are free.
            let free = (0..<64).filter { block in
                guard let probe = locks.tryLock(key: 7, range: UInt64(block)..<UInt64(block + 1)) else { return false }
                locks.unlock(probe)
                return true
            }
            #expect(free.count == released + 1)
        }
    }

    @Test func aWaiterRunsOnceTheOverlapIsReleased() async throws {
        let locks = RangeLocks()
        let held = try #require(locks.tryLock(key: 3, range: 0..<8))
        let entered = Locked(false)
        let waiter = Task.detached { locks.withLock(key: 3, range: 4..<5) { entered.withLock { $0 = true } } }
        try await Task.sleep(for: .milliseconds(100))
        #expect(entered.withLock { $0 } == false)
        locks.unlock(held)
        await waiter.value
        #expect(entered.withLock { $0 } == true)
    }
}
