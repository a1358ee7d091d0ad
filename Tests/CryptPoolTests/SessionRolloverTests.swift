import PoolFormat
import Testing

@testable import CryptPool

/// A volume's data nonces (docs/format.md, "Nonces"): each write takes the
/// next counters of its session, and a write that would pass the bound of
/// seals per key starts a new session first, so no counter is used twice
/// under one key.
@Suite struct SessionRolloverTests {
    @Test func writesTakeConsecutiveCountersOfOneSession() throws {
        let rig = try TamperRig()
        try rig.pool.createVolume(name: "vm1", size: 1 << 20)
        try rig.fill("vm1", from: 0, count: 1, seed: 1)
        let first = try rig.pointer("vm1", 0)
        try rig.fill("vm1", from: 1, count: 3, seed: 1)
        for block in UInt64(1)...3 {
            let pointer = try rig.pointer("vm1", block)
            #expect(pointer.salt == first.salt)
            #expect(pointer.counter.rawValue == first.counter.rawValue + block)
        }
    }

    @Test func aWritePastTheBoundStartsANewSessionFromCounterZero() throws {
        let rig = try TamperRig()
        try rig.pool.createVolume(name: "vm1", size: 1 << 20)
        try rig.fill("vm1", from: 0, count: 1, seed: 2)
        let before = try rig.pointer("vm1", 0)
        let id = try rig.volumeState("vm1").id
        // One counter left in this session: a two-block write does not fit.
        rig.pool.state.withLock { $0.dataCounters[id] = maxSealsPerSessionKey - 1 }
        // The last counter of the session is still taken by a write of one block.
        try rig.put("vm1", 1, randomBytes(TamperRig.blockSize, seed: 3))
        let last = try rig.pointer("vm1", 1)
        #expect(last.salt == before.salt)
        #expect(last.counter.rawValue == maxSealsPerSessionKey - 1)
        rig.pool.state.withLock { $0.dataCounters[id] = maxSealsPerSessionKey - 1 }
        let pair = randomBytes(2 * TamperRig.blockSize, seed: 4)
        try write(try rig.pool.volume(named: "vm1"), 2 * UInt64(TamperRig.blockSize), pair)
        rig.expected["vm1", default: [:]][2] = Array(pair[..<TamperRig.blockSize])
        rig.expected["vm1", default: [:]][3] = Array(pair[TamperRig.blockSize...])
        let rolled = [try rig.pointer("vm1", 2), try rig.pointer("vm1", 3)]
        #expect(rolled.allSatisfy { $0.salt != before.salt })
        #expect(rolled.map(\.counter.rawValue) == [0, 1])
        #expect(rig.pool.state.withLock { $0.dataCounters[id] } == 2)
        rig.checkNoWrongData()
        try rig.pool.flush()
        rig.checkNoWrongData(in: try rig.reopen())
    }
}
