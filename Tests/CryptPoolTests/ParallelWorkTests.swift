import Glibc
import Synchronization
import Testing
import Threads

/// The crew that shares out a large request's cipher work.
@Suite struct ParallelWorkTests {
    @Test(arguments: [0, 1, 15, 16, 17, 256, 1000])
    func everyIndexRunsExactlyOnce(count: Int) {
        let crew = ParallelWork(helpers: 3)
        let seen = Mutex([Int](repeating: 0, count: count))
        crew.run(count: count, grain: 16) { range in
            for index in range { seen.withLock { $0[index] += 1 } }
        }
        #expect(seen.withLock { $0 } == [Int](repeating: 1, count: count))
    }

    /// Several threads share one crew at once (the storage reader opening
    /// one read while connection threads seal writes); each call returns
    /// only when its own pieces are done.
    @Test func concurrentCallersEachGetTheirWorkDone() {
        let crew = ParallelWork(helpers: 1)
        let callers = 8
        let totals = Mutex([Int](repeating: 0, count: callers))
        let done = Mutex(0)
        for caller in 0..<callers {
            startThread {
                for _ in 0..<50 {
                    let sum = Mutex(0)
                    crew.run(count: 256, grain: 16) { range in sum.withLock { $0 += range.count } }
                    // Every piece has run by the time `run` returns.
                    totals.withLock { $0[caller] += sum.withLock { $0 } }
                }
                done.withLock { $0 += 1 }
            }
        }
        let deadline = ContinuousClock.now + .seconds(30)
        while done.withLock({ $0 }) < callers, ContinuousClock.now < deadline { usleepLike() }
        #expect(totals.withLock { $0 } == [Int](repeating: 256 * 50, count: callers))
    }

    @Test func noHelpersRunsOnTheCaller() {
        let crew = ParallelWork(helpers: 0)
        let ranges = Mutex<[Range<Int>]>([])
        crew.run(count: 100, grain: 1) { range in ranges.withLock { $0.append(range) } }
        #expect(ranges.withLock { $0 } == [0..<100])
    }
}

private func usleepLike() { usleep(5000) }
